"""`python benchmarks/finetune_e2e.py ...`: the same as `bertgen bench finetune_e2e -- ...` (the code is bertgen_jax/bench/finetune_e2e.py)."""

import sys

from bertgen_jax.launch import reexec_with_huge_pages

if __name__ == "__main__":
    reexec_with_huge_pages()  # as the `bertgen` program does, before JAX loads (bertgen_jax/launch.py)
    from bertgen_jax.bench.finetune_e2e import main

    sys.exit(main())
