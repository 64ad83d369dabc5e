"""The fine-tuning loop: sharded jitted steps, progress bar, eval, checkpoints, TensorBoard, export.

Output directory layout:

    checkpoints/<step>/     orbax train state (params, optimizer state, step, rng) + data position: every
                            `save_every` steps and at the end when saving periodically, on an interrupt,
                            or with `save_final_checkpoint` (the exported model is the product; written
                            in the background, waited for before the export and before returning)
    tensorboard/            event files (train/loss, train/lr, train/grad_norm, train/tokens_per_s,
                            eval/loss, eval/bleu, eval/exact_match, eval/samples)
    metrics.jsonl           every logged value, one JSON object per line
    loss_curve.png          train and eval loss against step
    model/                  the fine-tuned model (transformers format, `save_pretrained`) + tokenizer

Ctrl-C (SIGINT) or SIGTERM (preemption) finishes the step in flight, saves a checkpoint and returns
(`TrainResult.interrupted`); a second one aborts at once. On several processes the request of any
one of them reaches all of them through a tiny all-gather each step, so all stop after the same step
and write one checkpoint together.

`resume=True` continues from the latest checkpoint to the same result an uninterrupted run gives
(same data order, dropout rngs and optimizer state); with no checkpoint it is an error
(`ResumeError`), `resume="auto"` starts from step 0 then. A checkpoint that cannot be read (a
truncated array file or metadata) is reported by step and path, moved aside to
`checkpoints/damaged-<step>`, and the newest intact one is used.

Training data: `TokenizedData` (read and tokenized up front, `data.BatchLoader`) or a
`streaming.PairSource` (read and tokenized lazily, each process only its own rows:
`streaming.StreamingLoader`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..compile_cache import enable_for_training
from ..models import atomic_write_bytes, atomic_write_text, release_freed_host_memory
from . import distributed, packing
from . import sharding as sh
from .checkpoint import Checkpointer
from .data import BatchLoader, BatchPosition, TokenizedData, count_tokens
from .streaming import PairSource, StreamingLoader
from .optim import OptimizerConfig, learning_rate_at, make_optimizer
from .step import TrainState, create_train_state, make_eval_step, make_train_step

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    output_dir: str
    max_steps: Optional[int] = None  # optimizer updates; default: epochs x batches per epoch
    epochs: int = 1
    batch_size: int = 8  # examples per micro-batch, over all devices
    grad_accum: int = 1  # micro-batches per update
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: Optional[int] = None
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    label_smoothing: float = 0.0
    labelled_lm_head: bool = False  # LM head + loss on labelled target positions only (models.loss_function)
    separate_update: Optional[bool] = None  # gradients and update as two programs; None: by model size (step.py)
    dropout: bool = True
    bf16: bool = False
    seed: int = 0
    mesh: Optional[str] = None  # "data=N,fsdp=M"
    log_every: int = 10
    eval_every: int = 0  # 0: at the end only (and at the start with eval_at_start)
    eval_at_start: bool = False  # also evaluate before the first step (a baseline eval loss)
    save_every: int = 0  # 0: no periodic checkpoints (an interrupted run still saves one to resume from)
    save_final_checkpoint: bool = False  # a checkpoint at the end even with save_every 0 (to train on later)
    async_checkpoints: bool = True  # write checkpoints in the background while training goes on
    compilation_cache: Optional[str] = "auto"  # "auto": $BERTGEN_COMPILATION_CACHE or ~/.cache/...; "off"
    keep_checkpoints: int = 3
    resume: object = False  # False, True (a checkpoint must exist) or "auto" (resume if there is one)
    eval_batch_size: Optional[int] = None
    pad_to_multiple_of: int = 8  # padded lengths (see data.bucket_length): larger -> fewer compiled shapes
    length_group_batches: int = 50  # batches per length-sorted pool (1: plain shuffled batches, no grouping)
    # > 0: each micro-batch's pairs packed into this many rows (training.packing); 0: one pair per row;
    # "auto" (the CLI's default): batch_size / 4 rows where the plan says packing saves compute.
    pack_rows: object = 0
    eval_samples: int = 0  # > 0: generate for this many eval sources and score them (needs model.generate)
    max_source_length: int = 128
    max_target_length: int = 128  # streamed data is tokenized with these limits
    max_new_tokens: int = 64
    num_beams: int = 1
    progress: bool = True
    export: bool = True


@dataclasses.dataclass
class TrainResult:
    step: int
    interrupted: bool
    train_loss: Optional[float]
    eval_loss: Optional[float]
    eval_scores: dict
    export_dir: Optional[str]
    history: list


class ResumeError(ValueError):
    """Resuming was asked for and is not possible (no checkpoint, or none that can be read)."""


class _StopOnInterrupt:
    """First SIGINT or SIGTERM sets `requested` (the loop saves and stops); a second one raises
    KeyboardInterrupt. The handlers are installed only on the main thread (where Python delivers signals)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class Trainer:
    """Fine-tunes an `EncoderDecoderModel` on tokenized pairs (see `training.data`).

    `model.params` is replaced by the trained params at the end (or on Ctrl-C).
    `step_callback(step)` is called on the host after each dispatched step (tests, custom hooks).
    """

    def __init__(self, model, tokenizer, train_data, config: TrainConfig,
                 eval_data: Optional[TokenizedData] = None, step_callback: Optional[Callable[[int], None]] = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.train_data, self.eval_data = train_data, eval_data
        self.step_callback = step_callback
        self.is_main = jax.process_index() == 0
        c = config
        if c.length_group_batches < 1:
            raise ValueError(f"length_group_batches must be at least 1, got {c.length_group_batches}")
        # Before anything of the step compiles: a second run with the same shapes loads it from disk.
        self.compilation_cache_dir = enable_for_training(c.compilation_cache)
        self.mesh = sh.make_mesh(**sh.parse_mesh(c.mesh))
        divisor = sh.batch_divisor(self.mesh)
        for name, size in (("batch size", c.batch_size), ("eval batch size", c.eval_batch_size or c.batch_size)):
            if size % divisor:
                raise ValueError(f"{name} {size} must be a multiple of data x fsdp = {divisor} (the mesh "
                                 f"{dict(self.mesh.shape)})")
        pad_id = model.config.encoder.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id
        self.batch_sharding = sh.batch_sharding(self.mesh)
        self.streaming = isinstance(train_data, PairSource)
        if c.pack_rows != "auto" and (not isinstance(c.pack_rows, int) or c.pack_rows < 0):
            raise ValueError(f"pack_rows must be a number of rows, 0 or 'auto', got {c.pack_rows!r}")
        if c.pack_rows != "auto" and c.pack_rows and (self.streaming or c.pack_rows % divisor):
            raise ValueError(f"pack_rows {c.pack_rows}: " + (
                "packing needs data read up front (not streamed)" if self.streaming else
                f"must be a multiple of data x fsdp = {divisor} (the mesh {dict(self.mesh.shape)})"))
        self.pack_rows = 0
        if self.streaming:
            # This process reads only the batch rows its own devices hold.
            self.local_rows = _local_batch_rows(self.batch_sharding, c.grad_accum, c.batch_size)
            self._row_position = {row: i for i, row in enumerate(self.local_rows)}
            self.loader = StreamingLoader(
                train_data, tokenizer, batch_size=c.batch_size, accum=c.grad_accum, seed=c.seed, pad_token_id=pad_id,
                pad_to_multiple_of=c.pad_to_multiple_of, max_source_length=c.max_source_length,
                max_target_length=c.max_target_length, decoder_start_token_id=model.config.decoder_start_token_id,
                local_rows=self.local_rows, pool_batches=c.length_group_batches)
            # Padding never goes past what the model's position tables hold.
            self._length_caps = (min(c.max_source_length, _max_positions(model.config.encoder)),
                                 min(c.max_target_length, _max_positions(model.config.decoder)))
        else:
            loaders: dict = {}

            def loader_for(rows: int) -> BatchLoader:
                if rows not in loaders:
                    loader = BatchLoader(train_data, batch_size=c.batch_size, accum=c.grad_accum, seed=c.seed,
                                         pad_token_id=pad_id, pad_to_multiple_of=c.pad_to_multiple_of,
                                         pool_batches=c.length_group_batches, pack_rows=rows)
                    # Packed rows get one shape for every epoch the run covers (one compiled step).
                    loader.pack_epochs = max(1, -(-self._planned_steps(len(loader)) // len(loader)))
                    loaders[rows] = loader
                return loaders[rows]

            self.pack_rows = c.pack_rows
            if c.pack_rows == "auto":
                hidden = max(model.config.encoder.hidden_size, model.config.decoder.hidden_size)
                self.pack_rows = packing.choose_pack_rows(loader_for, c.batch_size, divisor,
                                                          self._planned_steps(len(loader_for(0))), hidden)
            self.loader = loader_for(self.pack_rows)
        self.eval_loader = None if eval_data is None else BatchLoader(
            eval_data, batch_size=c.eval_batch_size or c.batch_size, seed=c.seed, shuffle=False, pad_token_id=pad_id,
            pad_to_multiple_of=c.pad_to_multiple_of)
        self.total_steps = self._planned_steps(len(self.loader))
        if self.total_steps <= 0:
            raise ValueError(f"nothing to train: {self.total_steps} steps")
        warmup = c.warmup_steps if c.warmup_steps is not None else int(math.ceil(c.warmup_ratio * self.total_steps))
        self.optimizer_config = OptimizerConfig(
            learning_rate=c.learning_rate, weight_decay=c.weight_decay, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps,
            max_grad_norm=c.max_grad_norm, warmup_steps=warmup, total_steps=self.total_steps)
        self.optimizer = make_optimizer(self.optimizer_config, model.params)
        compute_dtype = jnp.bfloat16 if c.bf16 else None

        init = lambda params: create_train_state(params, self.optimizer, c.seed)  # noqa: E731
        self.state_sharding = sh.state_shardings(jax.eval_shape(init, model.params), self.optimizer, self.mesh)
        # Donated: the train state takes over model.params' buffers instead of holding a second copy
        # (model.params gets the trained values back at the end).
        # Compiled ahead beside the step's programs (`_compile_first_step_ahead`).
        self._init_state = distributed.CompiledTogether(
            jax.jit(init, out_shardings=self.state_sharding, donate_argnums=0), "train_state_init")
        # Each batch shard gathers its own labelled positions for the LM head (work stays on its devices).
        self.train_step = make_train_step(
            model, self.optimizer, label_smoothing=c.label_smoothing, deterministic=not c.dropout,
            compute_dtype=compute_dtype, state_sharding=self.state_sharding, batch_sharding=self.batch_sharding,
            labelled_only=c.labelled_lm_head, row_groups=divisor, separate_update=c.separate_update)
        self.eval_step = distributed.CompiledTogether(make_eval_step(
            model, compute_dtype=compute_dtype, params_sharding=self.state_sharding.params,
            batch_sharding=self.batch_sharding, labelled_only=c.labelled_lm_head, row_groups=divisor), "eval_step")
        self.history: list[dict] = []
        self._writer = None
        self._stop: Optional[_StopOnInterrupt] = None

    def _planned_steps(self, batches_per_epoch: int) -> int:
        c = self.config
        return c.max_steps if c.max_steps is not None else c.epochs * batches_per_epoch

    # ------------------------------------------------------------------ paths
    def path(self, *parts) -> str:
        return os.path.join(self.config.output_dir, *parts)

    # ------------------------------------------------------------------ state
    def _abstract_state(self):
        shapes = jax.eval_shape(lambda p: create_train_state(p, self.optimizer, self.config.seed), self.model.params)
        return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      shapes, self.state_sharding)

    def _start(self, checkpointer: Checkpointer) -> tuple[TrainState, BatchPosition]:
        resume = self.config.resume
        latest = checkpointer.latest_step()
        if latest is not None and not resume:
            raise ValueError(f"{checkpointer.directory} already holds checkpoints (latest step {latest}); "
                             "pass resume (--resume) to continue, or use another output directory")
        if resume and latest is None:
            if resume != "auto":
                raise ResumeError(f"--resume: there is no checkpoint in {checkpointer.directory} to resume from "
                                  "(pass --resume auto to start from step 0 when there is none)")
            self._message(f"no checkpoint in {checkpointer.directory}: starting from step 0")
        if resume and latest is not None:
            step, state, meta = self._restore_newest_intact(checkpointer)
            if meta.get("total_steps") not in (None, self.total_steps):
                logger.warning("resuming a run planned for %s steps with %s steps", meta["total_steps"],
                               self.total_steps)
            if meta.get("data") not in (None, self._data_identity()):
                self._message(f"warning: checkpoint step {step} was written for other training data "
                              f"({meta['data']}); this run has {self._data_identity()}")
            self.history = [h for h in _read_jsonl(self.path("metrics.jsonl")) if h.get("step", 0) <= step]
            if self.is_main:  # drop what was logged after the checkpoint: those steps run again
                _write_jsonl(self.path("metrics.jsonl"), self.history)
            self._message(f"resumed from step {step} ({os.path.join(checkpointer.directory, str(step))})")
            return state, BatchPosition.from_dict(meta["data_position"])
        self._compile_first_step_ahead()
        with warnings.catch_warnings():  # host (numpy) or differently sharded params cannot be donated
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            state = self._init_state(self.model.params)
        return state, BatchPosition()

    def _compile_first_step_ahead(self) -> None:
        """Compile the training step for the first batch's shapes before the train state exists.
        XLA holds several hundred MB of host memory while it compiles the step (~0.8 GB at MiniLM size);
        compiled at the first step, that came on top of params + optimizer state + the step's own
        buffers and set the run's peak. Streamed batches are padded to lengths the processes agree on
        at each step, so their step still compiles at the first call; a resumed run restores its state
        first (the data position is in the checkpoint) and compiles at the first call too."""
        if self.streaming:
            return
        _, batch = next(self.loader.batches(BatchPosition()))
        # Start-up work that would otherwise wait for the step's programs (the state's program, the
        # summary writer's ~0.3-0.5 s import; the step makes its first gradient buffer there too): on the
        # second compile thread while the gradients' program compiles (a cold MiniLM bert2bert run of the
        # end-to-end job: 2.3 s sooner on 2 cores).
        beside = [lambda: self._init_state.compile_ahead(self.model.params)]
        if self.is_main:
            beside.append(_summary_writer_class)
        self.train_step.compile_ahead(self._abstract_state(), sh.shard_batch(batch, self.batch_sharding),
                                      while_compiling=beside)
        release_freed_host_memory()  # what the compiler freed, before the state is allocated

    def _restore_newest_intact(self, checkpointer: Checkpointer):
        """Restore the newest checkpoint that reads back whole. One that fails (truncated array data,
        truncated or invalid metadata, ...) on any process is reported by step and path and moved aside
        (`damaged-<step>`), so that this run's later saves do not collide with it."""
        damaged = []
        for step in sorted(checkpointer.all_steps(), reverse=True):
            path = os.path.join(checkpointer.directory, str(step))
            try:
                state, meta = checkpointer.restore(self._abstract_state(), step)
                if "data_position" not in meta:
                    raise ValueError("its metadata has no data position")
                error = None
            except Exception as err:  # TensorStore, JSON, orbax errors: all mean "cannot use this one"
                state, meta, error = None, None, err
            if distributed.allgather_ints([error is not None]).any():
                reason = " ".join(str(error).split())[:200] if error is not None else "unreadable on another process"
                self._message(f"checkpoint step {step} ({path}) is damaged and is skipped: "
                              f"{type(error).__name__ if error else 'error'}: {reason}")
                damaged.append(step)
                continue
            if damaged:
                self._set_aside(checkpointer, damaged)
                self._message(f"falling back to the newest intact checkpoint: step {step} ({path})")
            return step, state, meta
        raise ResumeError(f"--resume: no checkpoint in {checkpointer.directory} can be read (damaged: steps "
                          f"{', '.join(map(str, damaged))})")

    def _set_aside(self, checkpointer: Checkpointer, steps: list[int]) -> None:
        if self.is_main:
            for step in steps:
                source = os.path.join(checkpointer.directory, str(step))
                target = os.path.join(checkpointer.directory, f"damaged-{step}")
                suffix = 1
                while os.path.exists(target):
                    target, suffix = os.path.join(checkpointer.directory, f"damaged-{step}.{suffix}"), suffix + 1
                os.replace(source, target)
                self._message(f"moved the damaged checkpoint step {step} to {target}")
        _sync("bertgen: damaged checkpoints set aside")
        checkpointer.reload()

    def _data_identity(self) -> str:
        data = self.train_data
        if isinstance(data, PairSource):
            return f"{os.path.basename(data.path)}: {data.num_records} records, {data.fingerprint()}"
        return f"{os.path.basename(data.path)}: {len(data)} examples"

    def _save(self, checkpointer: Checkpointer, state: TrainState, position: BatchPosition) -> None:
        step = int(state.step)
        if step in checkpointer.all_steps():
            return
        checkpointer.save(step, state, {"data_position": position.to_dict(), "total_steps": self.total_steps,
                                        "seed": self.config.seed, "data": self._data_identity()})

    # ------------------------------------------------------------------ logging
    def _message(self, text: str) -> None:
        """A line for the person running this (above the progress bar when there is one)."""
        if self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(text) if self.config.progress else print(text, flush=True)
        logger.debug(text)

    def _record(self, entry: dict) -> None:
        self.history.append(entry)
        if not self.is_main:
            return
        with open(self.path("metrics.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self._writer is not None:
            for key, value in entry.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, entry["step"])
            self._writer.flush()

    def _open_writer(self, start_step: int) -> None:
        if not self.is_main:
            return
        self._writer = _summary_writer_class()(self.path("tensorboard"), purge_step=start_step or None)

    # ------------------------------------------------------------------ eval
    def evaluate(self, params, step: int) -> tuple[Optional[float], dict]:
        """Eval loss over the eval set (and generation scores when `eval_samples` > 0)."""
        if self.eval_loader is None:
            return None, {}
        total, count = 0.0, 0.0
        for _, batch in self.eval_loader.batches(epochs=1):
            loss_sum, n = self.eval_step(params, sh.shard_batch(batch, self.batch_sharding))
            total, count = total + float(loss_sum), count + float(n)
        eval_loss = total / max(count, 1.0)
        entry = {"step": step, "eval/loss": eval_loss}
        scores: dict = {}
        if self.config.eval_samples > 0:
            scores = self._generation_scores(params, step)
            entry.update({f"eval/{k}": v for k, v in scores.items()})
        self._record(entry)
        text = f"step {step}: eval loss {eval_loss:.4f}"
        if scores:
            text += "; " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
        self._message(text)
        return eval_loss, scores

    def _generation_scores(self, params, step: int) -> dict:
        from .evaluate import evaluate_generation, format_samples

        examples = self.eval_data.examples[: self.config.eval_samples]
        sources = [e.source for e in examples]
        references = [e.target for e in examples]
        scores, predictions = evaluate_generation(
            self.model, self.tokenizer, sources, references, params=params,
            max_source_length=self.config.max_source_length, max_new_tokens=self.config.max_new_tokens,
            num_beams=self.config.num_beams, batch_size=self.config.eval_batch_size or self.config.batch_size)
        samples = format_samples(sources, predictions, references, limit=3)
        self._message(f"step {step}: generated samples\n{samples}")
        if self._writer is not None:
            self._writer.add_text("eval/samples", samples.replace("\n", "  \n"), step)
        return scores

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        c = self.config
        os.makedirs(c.output_dir, exist_ok=True)
        checkpointer = Checkpointer(self.path("checkpoints"), max_to_keep=c.keep_checkpoints,
                                    asynchronous=c.async_checkpoints)
        try:
            return self._train(checkpointer)
        finally:
            checkpointer.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _train(self, checkpointer: Checkpointer) -> TrainResult:
        layout = sh.describe(self.model.params, self.state_sharding.params)
        state, position = self._start(checkpointer)
        try:
            return self._loop(checkpointer, state, position, layout)
        except BaseException:
            # model.params may have been donated to the state: hand back the latest state's values.
            try:
                self.model.params = _to_host(self._live_state.params)
            except RuntimeError:  # deleted: the step in flight had consumed that state too
                pass
            raise

    def _loop(self, checkpointer: Checkpointer, state: TrainState, position: BatchPosition,
              layout: str) -> TrainResult:
        from tqdm.auto import tqdm

        c = self.config
        self._live_state = state
        step = first_step = int(state.step)
        release_freed_host_memory()  # the host copies made while building the train state
        self._open_writer(step)
        packed = ""
        if self.pack_rows:
            packed = " packed into {} rows of {} source + {} target tokens".format(self.pack_rows,
                                                                                  *self.loader.packed_lengths)
        self._message(f"training {self.total_steps} steps ({len(self.loader)} batches of "
                      f"{self.loader.examples_per_batch} per epoch{packed}) on mesh {dict(self.mesh.shape)}; " + layout)
        eval_loss, scores = None, {}
        if step == 0 and c.eval_at_start and self.eval_loader is not None:
            eval_loss, scores = self.evaluate(state.params, step)

        batches = self.loader.batches(position)
        bar = tqdm(total=self.total_steps, initial=step, desc="training", unit="step", disable=not (
            c.progress and self.is_main), dynamic_ncols=True)
        pending, window_tokens, window_start = [], 0, time.perf_counter()
        train_loss, interrupted = None, False
        multiprocess = distributed.is_multiprocess()

        def log_pending():
            nonlocal pending, window_tokens, window_start, train_loss
            if not pending:
                return
            fetched = jax.device_get(pending)
            elapsed = time.perf_counter() - window_start
            train_loss = float(np.mean([m["loss"] for m in fetched]))
            entry = {"step": step, "train/loss": train_loss,
                     "train/grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
                     "train/lr": float(learning_rate_at(self.optimizer_config, step - 1)),
                     "train/tokens_per_s": window_tokens / max(elapsed, 1e-9)}
            self._record(entry)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{entry['train/tokens_per_s']:.0f}",
                            lr=f"{entry['train/lr']:.2e}")
            pending, window_tokens, window_start = [], 0, time.perf_counter()

        with _StopOnInterrupt() as stop:
            self._stop = stop
            try:
                while step < self.total_steps:
                    next_position, batch = next(batches)
                    lengths, tokens = self._local_lengths_and_tokens(batch)
                    if multiprocess:
                        # One tiny all-gather per step: every process's stop request, its rows' lengths
                        # (streamed batches are padded to the longest over all processes) and tokens.
                        agreed = distributed.allgather_ints([int(stop.requested), *lengths, tokens])
                        if agreed[:, 0].any():
                            asked = [i for i, flag in enumerate(agreed[:, 0].tolist()) if flag]
                            self._message(f"stop requested on process {', '.join(map(str, asked))}: every process "
                                          f"stops after step {step}")
                            interrupted = True
                            break
                        lengths, tokens = tuple(int(n) for n in agreed[:, 1:3].max(0)), int(agreed[:, 3].sum())
                    window_tokens += tokens
                    state, metrics = self.train_step(state, self._device_batch(batch, lengths))
                    self._live_state = state
                    if step == first_step:
                        # Compiling frees a lot of host memory that glibc keeps; give it back once.
                        jax.block_until_ready(metrics)
                        release_freed_host_memory()
                    step, position = step + 1, next_position
                    pending.append(metrics)
                    bar.update(1)
                    if self.step_callback is not None:
                        self.step_callback(step)
                    stopping = stop.requested and not multiprocess
                    if step % c.log_every == 0 or step == self.total_steps or stopping:
                        log_pending()
                    if c.eval_every and step % c.eval_every == 0 and step < self.total_steps:
                        eval_loss, scores = self.evaluate(state.params, step)
                    if c.save_every and step % c.save_every == 0:
                        self._save(checkpointer, state, position)
                    if stopping:
                        interrupted = True
                        break
                log_pending()
            finally:  # a second Ctrl-C raises KeyboardInterrupt: abort without saving
                bar.close()
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

        if interrupted or c.save_every or c.save_final_checkpoint:  # what a resume (or a later run) starts from
            self._save(checkpointer, state, position)
        checkpointer.wait_until_finished()  # the checkpoints are on disk before the run reports success
        # The optimizer state (2x the params) and the step's gradient buffer are not needed any more: free
        # them before the host copy of the params, the final eval and the export, which would otherwise
        # raise the peak memory.
        self.train_step.release()
        for leaf in jax.tree_util.tree_leaves(state.opt_state):
            if isinstance(leaf, jax.Array) and not leaf.is_deleted():
                leaf.delete()
        state = state.replace(opt_state=None)
        self._live_state = state
        self.model.params = _to_host(state.params)
        export_dir = None
        if interrupted:
            by = f" by {self._stop.signal_name}" if self._stop and self._stop.signal_name else ""
            self._message(f"interrupted{by} at step {step}: checkpoint saved in {checkpointer.directory}; "
                          "run again with --resume to continue")
        else:
            if self.eval_loader is not None:
                eval_loss, scores = self.evaluate(state.params, step)
            if c.export and self.is_main:
                export_dir = self.export(self.path("model"))
        if self.is_main:
            self.plot(self.path("loss_curve.png"))
        _sync("bertgen: run finished")  # nobody leaves while another process still needs the coordinator
        return TrainResult(step, interrupted, train_loss, eval_loss, scores, export_dir, list(self.history))

    def request_stop(self) -> None:
        """Stop after the step in flight, save a checkpoint and return, as Ctrl-C does."""
        if self._stop is not None:
            self._stop.requested = True

    # ------------------------------------------------------------------ batches
    def _local_lengths_and_tokens(self, batch) -> tuple[tuple[int, int], int]:
        if self.streaming:
            return batch.lengths, batch.num_tokens
        return (0, 0), count_tokens(batch)

    def _device_batch(self, batch, lengths: tuple[int, int]) -> dict:
        """Global arrays on the mesh. In-memory batches are whole on every process; streamed ones hold
        this process's rows only, padded to the lengths agreed by all processes."""
        if not self.streaming:
            return sh.shard_batch(batch, self.batch_sharding)
        src_len, tgt_len = self.loader.padded_lengths(*lengths, self._length_caps)
        local = batch.arrays(src_len, tgt_len, self.pad_id)
        accum, size = self.config.grad_accum, self.config.batch_size

        def rows_of(key):
            def fetch(index):
                rows = index[1]
                start = self._row_position[rows.start or 0]
                stop = start + ((rows.stop if rows.stop is not None else size) - (rows.start or 0))
                return local[key][(index[0], slice(start, stop)) + tuple(index[2:])]
            return fetch

        return {key: jax.make_array_from_callback((accum, size, value.shape[-1]), self.batch_sharding, rows_of(key))
                for key, value in local.items()}

    # ------------------------------------------------------------------ outputs
    def export(self, directory: str) -> str:
        """The model (transformers format) and the tokenizer, loadable by `from_pretrained`."""
        self.model.save_pretrained(directory)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(directory)
        self._message(f"exported the fine-tuned model to {directory}")
        return directory

    def plot(self, path: str) -> Optional[str]:
        """Train (and eval) loss against step as a PNG."""
        train = [(h["step"], h["train/loss"]) for h in self.history if "train/loss" in h]
        evals = [(h["step"], h["eval/loss"]) for h in self.history if "eval/loss" in h]
        if not train and not evals:
            return None
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7, 4.5), dpi=100)
        axes = figure.add_subplot()
        if train:
            axes.plot(*zip(*train), label="train loss", color="tab:blue")
        if evals:
            axes.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
        values = [v for _, v in train + evals]
        if min(values) > 0 and max(values) / min(values) > 20:
            axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("cross-entropy (nats / token)")
        axes.set_title("bertgen fine-tuning")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        image = io.BytesIO()
        figure.savefig(image, format="png")
        atomic_write_bytes(path, image.getvalue())
        return path


def _summary_writer_class():
    """tensorboardX's SummaryWriter without PyTorch: tensorboardX imports torch when it can (only to
    accept torch tensors, which the trainer never logs), and torch costs some 300 MB of resident memory."""
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_jsonl(path: str, entries: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in entries))


def _local_batch_rows(sharding, accum: int, batch_size: int) -> list[int]:
    """The rows of the batch dimension that this process's devices hold."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((accum, batch_size, 1)).values():
        rows.update(range(*index[1].indices(batch_size)))
    return sorted(rows)


def _max_positions(config) -> int:
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else 1 << 30


def _sync(name: str) -> None:
    if distributed.is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _to_host(tree):
    """Device arrays -> numpy (gathered from every process on multi-host meshes)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
