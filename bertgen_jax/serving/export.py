"""`bertgen export`: serialize the compiled generate with `jax.export`, one program per shape bucket.

The directory written holds
  bertgen_export.json   the manifest: JAX version, calling convention, platforms, buckets, options
  params.safetensors    the weights, passed to every program as arguments (not baked in)
  programs/*.jaxexport  `jax.export` serializations, one per (option set, batch size, input length)
  tokenizer and config files copied from the checkpoint
and is written to a temporary sibling, then renamed, so a half-written export never looks complete.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

MANIFEST_NAME = "bertgen_export.json"
PARAMS_NAME = "params.safetensors"
FORMAT_VERSION = 1
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
MIN_INPUT_LENGTH = 16  # generate's smallest length bucket

DESCRIPTION = ("Serialize the compiled generate (encoder + decode loop) of a bert2bert / roberta2roberta checkpoint "
               "with jax.export, one program per batch size x input-length bucket x option set, with the weights "
               "(safetensors) and tokenizer files beside it. `bertgen_jax.serving.load_exported(DIR)` and "
               "`bertgen serve --model DIR` run it with JAX alone (no flax, no model code).")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return sorted(set(values))


def input_length_buckets(max_input_length: int) -> list[int]:
    """generate's length buckets (powers of two from 16) up to `max_input_length`, which is the last."""
    lengths, size = [], MIN_INPUT_LENGTH
    while size < max_input_length:
        lengths.append(size)
        size *= 2
    return lengths + [max_input_length]


def dtype_named(name: str):
    import jax.numpy as jnp

    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(f"--dtype {name!r} is not one of float32, bfloat16, float16") from None


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="encoder-decoder checkpoint directory or hub repo id")
    parser.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch buckets (default 1,8)")
    parser.add_argument("--max-input-length", type=int, default=128,
                        help="longest input in tokens; programs for 16, 32, ... up to it (default 128)")
    parser.add_argument("--max-new-tokens", default=None, help="comma-separated; one option set per value")
    parser.add_argument("--num-beams", default=None, help="comma-separated; one option set per value")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--min-new-tokens", type=int, default=None)
    parser.add_argument("--length-penalty", type=float, default=None)
    parser.add_argument("--early-stopping", default=None, choices=("true", "false", "never"))
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--num-return-sequences", type=int, default=None)
    parser.add_argument("--do-sample", action="store_true", default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--platforms", default="cpu",
                        help=f"comma-separated targets among {', '.join(PLATFORMS)} (default cpu); one "
                             "program serves them all; no accelerator is needed to export for it")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def run(args) -> int:
    fixed = {name: getattr(args, name) for name in (
        "max_length", "min_new_tokens", "length_penalty", "no_repeat_ngram_size", "repetition_penalty",
        "num_return_sequences", "do_sample", "temperature", "top_k", "top_p")}
    if args.early_stopping is not None:
        fixed["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    option_sets = []
    for new_tokens, beams in itertools.product(
            _int_list(args.max_new_tokens) if args.max_new_tokens else [None],
            _int_list(args.num_beams) if args.num_beams else [None]):
        options = dict(fixed, max_new_tokens=new_tokens, num_beams=beams)
        option_sets.append({k: v for k, v in options.items() if v is not None})
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    manifest = export_model(args.model, args.out, batch_sizes=_int_list(args.batch_sizes),
                            max_input_length=args.max_input_length, option_sets=option_sets, platforms=platforms,
                            dtype=dtype_named(args.dtype))
    print(f"{len(manifest['programs'])} program(s) for {', '.join(manifest['platforms'])} "
          f"(batch sizes {manifest['batch_sizes']}, input lengths {manifest['input_lengths']}, "
          f"{len(manifest['option_sets'])} option set(s)) -> {args.out}")
    return 0


def export_model(model_path: str, out_dir: str, *, batch_sizes: Sequence[int] = (1, 8), max_input_length: int = 128,
                 option_sets: Sequence[dict] = ({},), platforms: Sequence[str] = ("cpu",), dtype=None,
                 model=None) -> dict:
    """Export `model_path` (or a loaded `model`, whose tokenizer files are still read from `model_path`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import export as jax_export
    from safetensors.numpy import save_file

    from .. import __version__
    from ..hub import resolve_model_dir
    from ..models import EncoderDecoderModel
    from ..tokenization.base import TOKENIZER_PATTERNS
    from .program import flat_params, generate_program

    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"--platforms {','.join(platforms)!r}: choose among {', '.join(PLATFORMS)}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"--out {out_dir} exists and is not empty; choose a new directory")
    directory = resolve_model_dir(model_path)
    if model is None:
        model = EncoderDecoderModel.from_pretrained(directory, dtype=dtype or jnp.float32)
    limit = model.config.encoder.max_position_embeddings
    if not 0 < max_input_length <= limit:
        raise ValueError(f"--max-input-length {max_input_length} must be in [1, {limit}] "
                         f"(the encoder's max_position_embeddings)")
    lengths = input_length_buckets(max_input_length)
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] <= 0:
        raise ValueError(f"--batch-sizes must be positive integers, got {batch_sizes}")

    named = flat_params(model)
    param_specs = {name: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for name, v in named.items()}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        os.makedirs(os.path.join(staging, "programs"))
        save_file({k: np.ascontiguousarray(v) for k, v in named.items()}, os.path.join(staging, PARAMS_NAME))
        recorded_sets, programs, calling_convention = [], [], None
        for set_index, user_options in enumerate(option_sets):
            program = generate_program(model, dict(user_options))
            recorded_sets.append({"given": dict(user_options), "options": program.options,
                                  "max_length": program.max_length,
                                  "num_return_sequences": program.num_return_sequences, "beam": program.beam})
            exporter = jax_export.export(jax.jit(program.fn), platforms=tuple(platforms))
            for batch, length in itertools.product(batch_sizes, lengths):
                ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
                exported = exporter(param_specs, ids, ids, jax.ShapeDtypeStruct((2,), jnp.uint32))
                calling_convention = exported.calling_convention_version
                name = f"programs/set{set_index}_b{batch}_s{length}.jaxexport"
                with open(os.path.join(staging, name), "wb") as handle:
                    handle.write(exported.serialize())
                programs.append({"file": name, "option_set": set_index, "batch_size": batch, "input_length": length})
        copied = []
        for pattern in TOKENIZER_PATTERNS:
            for path in sorted(glob.glob(os.path.join(directory, pattern))):
                if os.path.basename(path) != MANIFEST_NAME:
                    shutil.copy2(path, os.path.join(staging, os.path.basename(path)))
                    copied.append(os.path.basename(path))
        manifest = {
            "format": "bertgen-export", "format_version": FORMAT_VERSION,
            "jax_version": jax.__version__, "jaxlib_version": _jaxlib_version(),
            "bertgen_jax_version": __version__, "calling_convention_version": calling_convention,
            "platforms": list(platforms), "params_file": PARAMS_NAME,
            "batch_sizes": batch_sizes, "input_lengths": lengths, "max_input_length": int(max_input_length),
            "encoder_max_position_embeddings": int(limit),
            "option_sets": recorded_sets, "programs": programs, "files": sorted(copied),
        }
        with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary directory
        os.chmod(os.path.join(staging, PARAMS_NAME), 0o666 & ~umask)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _jaxlib_version() -> Optional[str]:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None
