"""`bertgen serve`: an HTTP server (FastAPI on uvicorn) that batches generate requests.

`POST /generate` takes the Hugging Face inference request shape, `{"inputs": text or [texts],
"parameters": {generation options by their transformers names}}`, and answers with what
`pipeline("text2text-generation")(inputs, **parameters)` returns (`"seed"` gives sampling its
`prng_key`, default 0). `GET /health`; `GET /metrics` in Prometheus' text format.

FastAPI + uvicorn: the most used ASGI pair in Python, both kept; uvicorn's graceful shutdown
(SIGTERM: stop accepting, finish the requests in flight) gives the drain with no code here, and
prometheus_client writes the metrics format.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request, imported lazily).

import itertools
import json
import logging
import os
import signal
import time
from typing import Any, Optional, Sequence

import numpy as np

from .batcher import Batcher, QueueFull
from .export import MANIFEST_NAME, dtype_named
from .options import OptionError, check_options

logger = logging.getLogger(__name__)

PIPELINE_BATCH_SIZE = 8  # the pipeline's default; sampled requests run in chunks of it, as there
RETRY_AFTER_S = 1

DESCRIPTION = ("Serve a bert2bert / roberta2roberta over HTTP: POST /generate {\"inputs\": ..., \"parameters\": {...}} "
               "answers what pipeline(\"text2text-generation\") returns; GET /health; GET /metrics (Prometheus). "
               "Requests arriving within --batch-window-ms with the same options share one generate call. "
               "--model is a checkpoint directory (runs model.generate) or a `bertgen export` directory (runs the "
               "exported programs, no model code).")


# ----------------------------------------------------------------------------- engines
class _Engine:
    """What the server needs from a model: option checks, tokenization, batched generate."""

    kind = ""
    max_input_length = 0
    pad_token_id = 0
    tokenizer = None

    def check(self, options: dict) -> Any:
        """A key naming the compiled configuration the options select; OptionError if they are bad."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def generate_rows(self, options: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, options: dict, rows: list[list[int]], chunk: int) -> list[tuple[list[str], int]]:
        """Per row: its num_return_sequences texts and the tokens generated for them."""
        results = []
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            width = max(len(r) for r in part)
            ids = np.full((len(part), width), self.pad_token_id, np.int64)
            mask = np.zeros((len(part), width), np.int64)
            for i, row in enumerate(part):
                ids[i, :len(row)], mask[i, :len(row)] = row, 1
            sequences = np.asarray(self.generate_rows(options, ids, mask))
            per_row = sequences.shape[0] // len(part)
            texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
            generated = (sequences[:, 1:] != self.pad_token_id).sum(axis=1)
            for i in range(len(part)):
                rows_of_i = slice(i * per_row, (i + 1) * per_row)
                results.append((texts[rows_of_i], int(generated[rows_of_i].sum())))
        return results


def _prng_key(options: dict):
    import jax

    options = dict(options)
    seed = options.pop("seed", None)
    if options.get("do_sample"):
        options["prng_key"] = jax.random.PRNGKey(0 if seed is None else seed)
    return options


class ExportedEngine(_Engine):
    kind = "export"

    def __init__(self, directory: str):
        from .loader import load_exported

        self.model = load_exported(directory)
        self.tokenizer = self.model.tokenizer
        self.max_input_length = self.model.max_input_length
        self.max_batch = self.model.batch_sizes[-1]
        self.pad_token_id = int(self.tokenizer.pad_token_id or 0)

    def check(self, options: dict):
        return ("set", self.model.option_set({k: v for k, v in options.items() if k != "seed"}))

    def tokenize(self, texts):
        return self.model.tokenize(texts)

    def generate_rows(self, options, ids, mask):
        return self.model.generate_ids(ids, mask, **_prng_key(options)).sequences


class ModelEngine(_Engine):
    kind = "model"

    def __init__(self, directory: str, dtype=None):
        import jax.numpy as jnp

        from ..models import EncoderDecoderModel
        from ..tokenization import AutoTokenizer

        self.model = EncoderDecoderModel.from_pretrained(directory, dtype=dtype or jnp.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.max_input_length = int(self.model.config.encoder.max_position_embeddings)
        self.max_batch = 32
        self.pad_token_id = int(self.tokenizer.pad_token_id or 0)

    def check(self, options: dict):
        from ..generation.options import resolve_options
        from ..pipeline import pipeline_generate_kwargs

        checked = check_options({k: v for k, v in options.items() if k != "seed"})
        try:
            resolve_options(self.model.config, self.model.generation_config,
                            pipeline_generate_kwargs(self.model, checked))
        except ValueError as err:
            raise OptionError("parameters", str(err)) from err
        return ("options", json.dumps(checked, sort_keys=True))

    def tokenize(self, texts):
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_input_length)
        return [list(ids) for ids in encoded["input_ids"]]

    def generate_rows(self, options, ids, mask):
        from ..pipeline import pipeline_generate_kwargs

        return self.model.generate(ids, mask, **pipeline_generate_kwargs(self.model, _prng_key(options))).sequences


def load_engine(path: str, dtype=None) -> _Engine:
    if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        return ExportedEngine(path)
    return ModelEngine(path, dtype=dtype)


# ----------------------------------------------------------------------------- metrics
class Metrics:
    def __init__(self, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("bertgen_requests", "HTTP generate requests by status code", ["code"],
                                registry=self.registry)
        self.input_tokens = Counter("bertgen_input_tokens", "input tokens of accepted requests", registry=self.registry)
        self.generated_tokens = Counter("bertgen_generated_tokens", "generated tokens (padding excluded)",
                                        registry=self.registry)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch})
        self.batch_size = Histogram("bertgen_batch_size", "rows per generate call", buckets=sizes,
                                    registry=self.registry)
        self.batch_fill = Histogram("bertgen_batch_fill", "rows per generate call / --max-batch-size",
                                    buckets=(0.125, 0.25, 0.5, 0.75, 1.0), registry=self.registry)
        self.batch_seconds = Histogram("bertgen_batch_seconds", "seconds per generate call", registry=self.registry)
        self.queue_depth = Gauge("bertgen_queue_depth", "rows waiting for a generate call", registry=self.registry)
        self.latency = Histogram("bertgen_request_latency_seconds", "generate request latency, accepted to answered",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.max_batch = max_batch

    def batch_done(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_fill.observe(rows / self.max_batch)
        self.batch_seconds.observe(seconds)


# ----------------------------------------------------------------------------- app
def _error(status: int, field: str, message: str, headers: Optional[dict] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def _field_of(message: str, options: dict) -> str:
    named = [name for name in options if name in message]
    return f"parameters.{named[0]}" if named else "parameters"


def create_app(engine: _Engine, *, max_batch: int, window_ms: float, max_queue: int,
               max_input_length: Optional[int] = None, max_wait_ms: Optional[float] = None):
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    limit = int(max_input_length or engine.max_input_length)
    if limit > engine.max_input_length:
        raise ValueError(f"--max-input-length {limit} exceeds what the model takes ({engine.max_input_length})")
    metrics = Metrics(max_batch)
    unique = itertools.count()

    def run(key, options, rows):
        return engine.run(options, rows, PIPELINE_BATCH_SIZE if options.get("do_sample") else max_batch)

    batcher = Batcher(run, max_batch=max_batch, window_s=window_ms / 1000.0, max_queue=max_queue,
                      max_wait_s=None if max_wait_ms is None else max_wait_ms / 1000.0, on_batch=metrics.batch_done)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.drain_and_stop()  # uvicorn has finished the requests in flight; nothing left queued

    app = FastAPI(title="bertgen_jax", lifespan=lifespan)

    def answer(status: int, content=None, field: str = "", message: str = "", headers=None):
        metrics.requests.labels(code=str(status)).inc()
        if status != 200:
            return _error(status, field, message, headers)
        return JSONResponse(content)

    @app.get("/health")
    async def health():
        return {"status": "ok", "engine": engine.kind, "queue_rows": batcher.queued_rows}

    @app.get("/metrics")
    async def metrics_text():
        metrics.queue_depth.set(batcher.queued_rows)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/generate")
    async def generate(request: Request):
        started = time.monotonic()
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return answer(400, field="body", message=f"the request body is not JSON: {err}")
        if not isinstance(body, dict):
            return answer(422, field="body", message="the request body must be a JSON object")
        unknown = sorted(set(body) - {"inputs", "parameters", "options"})
        if unknown:
            return answer(422, field=unknown[0], message=f"unknown field {unknown[0]!r}; expected inputs, parameters")
        if "inputs" not in body:
            return answer(422, field="inputs", message="missing field 'inputs' (a text or a list of texts)")
        inputs = body["inputs"]
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return answer(422, field="inputs", message="inputs must be a string or a non-empty list of strings")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            return answer(422, field="parameters", message="parameters must be a JSON object")
        seed = parameters.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            return answer(422, field="parameters.seed", message=f"seed must be a non-negative integer, got {seed!r}")
        try:
            key = engine.check(parameters)
        except OptionError as err:
            field = err.field if err.field.startswith("parameters") else f"parameters.{err.field}"
            return answer(422, field=field, message=str(err))
        if parameters.get("do_sample"):
            key = (key, "sampled", next(unique))  # runs alone, as the pipeline would run it
        rows = engine.tokenize(texts)
        for index, row in enumerate(rows):
            if len(row) > limit:
                field = "inputs" if isinstance(inputs, str) else f"inputs[{index}]"
                return answer(413, field=field, message=f"{field} has {len(row)} tokens; at most {limit} are "
                                                         f"served")
        try:
            results = await batcher.submit(key, parameters, rows)
        except QueueFull as err:
            return answer(503, field="", message=f"server busy: {err}; retry later",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        except (OptionError, ValueError) as err:
            return answer(422, field=_field_of(str(err), parameters), message=str(err).splitlines()[0])
        except Exception as err:  # noqa: BLE001 - a failure of this request only
            logger.exception("generate failed")
            return answer(500, field="", message=f"generate failed: {type(err).__name__}: {err}")
        metrics.input_tokens.inc(sum(len(r) for r in rows))
        metrics.generated_tokens.inc(sum(tokens for _, tokens in results))
        outputs = [[{"generated_text": text} for text in texts_of_row] for texts_of_row, _ in results]
        if all(len(o) == 1 for o in outputs) and not (parameters.get("num_return_sequences") or 1) > 1:
            outputs = [o[0] for o in outputs]
        metrics.latency.observe(time.monotonic() - started)
        return answer(200, outputs)

    app.state.batcher, app.state.metrics = batcher, metrics
    return app


# ----------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory, or a `bertgen export` directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="most rows per generate call (default: 32, or the export's largest batch size)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="a batch closes once no request with its options has arrived for this long (default 5)")
    parser.add_argument("--batch-max-wait-ms", type=float, default=100.0,
                        help="while requests keep arriving, the oldest waits at most this long for its batch to fill "
                             "(default 100; never less than the window)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="most rows waiting; beyond it requests get 503 with Retry-After (default 1024)")
    parser.add_argument("--max-input-length", type=int, default=None,
                        help="longest input in tokens (default: the model's or the export's limit); longer: 413")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (checkpoint directories)")
    parser.add_argument("--warmup", action="store_true",
                        help="compile every exported program before listening (export directories)")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")


def run(args) -> int:
    import uvicorn

    if not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model}: no such directory")
    if args.batch_window_ms < 0 or args.batch_max_wait_ms < 0:  # before the model loads and compiles
        raise ValueError("--batch-window-ms and --batch-max-wait-ms must be non-negative")
    engine = load_engine(args.model, dtype=dtype_named(args.dtype))
    max_batch = args.max_batch_size or engine.max_batch
    if max_batch < 1:
        raise ValueError(f"--max-batch-size must be positive, got {max_batch}")
    if args.warmup and engine.kind == "export":
        started = time.monotonic()
        count = engine.model.warmup()
        print(f"compiled {count} program(s) in {time.monotonic() - started:.1f} s", flush=True)
    app = create_app(engine, max_batch=max_batch, window_ms=args.batch_window_ms, max_queue=args.max_queue,
                     max_input_length=args.max_input_length, max_wait_ms=args.batch_max_wait_ms)
    print(f"serving {args.model} ({engine.kind}) on http://{args.host}:{args.port} "
          f"(max batch {max_batch}, window {args.batch_window_ms:g} ms, max wait "
          f"{max(args.batch_window_ms, args.batch_max_wait_ms):g} ms, queue {args.max_queue} rows)", flush=True)
    # uvicorn drains on SIGTERM, then re-raises the signal with the handler it found installed: this one
    # makes a drained shutdown exit 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
