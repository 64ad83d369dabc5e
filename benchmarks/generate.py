"""`python benchmarks/generate.py ...`: the same as `bertgen bench generate -- ...` (the code is bertgen_jax/bench/generate.py)."""

import sys

from bertgen_jax.bench.generate import main

if __name__ == "__main__":
    sys.exit(main())
