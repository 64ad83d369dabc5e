"""Fine-tuning: optax AdamW on a (data, fsdp) device mesh, orbax checkpoints, resumable runs.

    from bertgen_jax.training import Trainer, TrainConfig, load_pairs
    data = load_pairs("train.jsonl", tokenizer, decoder_start_token_id=model.config.decoder_start_token_id)
    Trainer(model, tokenizer, data, TrainConfig(output_dir="out", max_steps=1000)).train()

Data larger than memory: `Trainer(model, tokenizer, PairSource("train.parquet"), config)` reads and
tokenizes lazily (`streaming`). Several processes: `distributed.initialize()` first (see `distributed`).

Pieces usable on their own: `make_optimizer` (optim), `make_train_step` / `make_grad_fn` (step),
`make_mesh` / `state_shardings` (sharding), `BatchLoader` (data), `StreamingLoader` (streaming),
`Checkpointer` (checkpoint).
"""

from .checkpoint import Checkpointer
from .data import BatchLoader, BatchPosition, DataError, load_pairs, read_examples, tokenize_examples
from .optim import OptimizerConfig, decay_mask, linear_schedule, make_optimizer
from .sharding import batch_sharding, make_mesh, param_shardings, parse_mesh, shard_batch, state_shardings
from .streaming import PairSource, StreamingLoader
from .step import TrainState, create_train_state, make_eval_step, make_grad_fn, make_loss_fn, make_train_step
from .trainer import ResumeError, TrainConfig, Trainer, TrainResult

__all__ = [
    "Checkpointer",
    "BatchLoader", "BatchPosition", "DataError", "load_pairs", "read_examples", "tokenize_examples",
    "OptimizerConfig", "decay_mask", "linear_schedule", "make_optimizer",
    "batch_sharding", "make_mesh", "param_shardings", "parse_mesh", "shard_batch", "state_shardings",
    "TrainState", "create_train_state", "make_eval_step", "make_grad_fn", "make_loss_fn", "make_train_step",
    "PairSource", "StreamingLoader",
    "ResumeError", "TrainConfig", "Trainer", "TrainResult",
]
