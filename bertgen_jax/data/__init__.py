"""Small data sets the project generates itself (no downloads)."""

from .fusion import fusion_splits, make_fusion_pairs, write_fusion_dataset

__all__ = ["fusion_splits", "make_fusion_pairs", "write_fusion_dataset"]
