"""`python benchmarks/quantization.py ...`: the same as `bertgen bench quantization -- ...` (the code is bertgen_jax/bench/quantization.py)."""

import sys

from bertgen_jax.bench.quantization import main

if __name__ == "__main__":
    sys.exit(main())
