"""`python benchmarks/finetune_e2e.py ...`: the same as `bertgen bench finetune_e2e -- ...` (the code is bertgen_jax/bench/finetune_e2e.py)."""

import sys

from bertgen_jax.bench.finetune_e2e import main

if __name__ == "__main__":
    sys.exit(main())
