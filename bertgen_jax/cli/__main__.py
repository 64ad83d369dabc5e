"""`python -m bertgen_jax.cli ...`: the same as the `bertgen` console script."""

import sys

from ..launch import main

sys.exit(main())
