"""Side-by-side benchmarks against PyTorch transformers (generation, training step, quantization), packaged so
that `bertgen bench` runs in any install; `benchmarks/*.py` in the source tree are thin entry points to them."""
