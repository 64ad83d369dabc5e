"""`python -m bertgen_jax.cli ...`: the same as the `bertgen` console script."""

import sys

from . import main

sys.exit(main())
