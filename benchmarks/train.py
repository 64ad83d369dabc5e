"""`python benchmarks/train.py ...`: the same as `bertgen bench train -- ...` (the code is bertgen_jax/bench/train.py)."""

import sys

from bertgen_jax.bench.train import main

if __name__ == "__main__":
    sys.exit(main())
