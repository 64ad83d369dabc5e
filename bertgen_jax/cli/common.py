"""Arguments and helpers that several subcommands share: the model source, the compute dtype."""

from __future__ import annotations

import argparse
import os

MODEL_KINDS = ("auto", "encoder", "decoder", "encoder-decoder")
DTYPES = ("float32", "bfloat16", "float16")


def add_model_argument(parser: argparse.ArgumentParser, *, required: bool = False, help: str,
                       local_files_only: bool = False) -> None:
    """`--model` (a checkpoint directory or hub repo id) and, where the command reaches the hub, `--local-files-only`."""
    parser.add_argument("--model", required=required, default=None, help=help)
    if local_files_only:
        parser.add_argument("--local-files-only", action="store_true", help="do not reach the hub")


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float32", help="compute dtype: " + ", ".join(DTYPES))


def jax_dtype(name: str):
    """The jax dtype for a `--dtype` value; an unknown name is a one-line error."""
    import jax.numpy as jnp

    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(jnp, name)


def model_class_for(path_or_repo_id: str, kind: str = "auto", **hub_kwargs):
    """The model class for a checkpoint: its config's model_type / architectures decide."""
    from .. import models
    from ..config import CONFIG_NAME, read_config_json
    from ..hub import resolve_model_dir

    if kind != "auto":
        return {"encoder": models.BertGenerationEncoder, "decoder": models.BertGenerationDecoder,
                "encoder-decoder": models.EncoderDecoderModel}[kind]
    directory = resolve_model_dir(path_or_repo_id, **hub_kwargs)
    values = read_config_json(os.path.join(directory, CONFIG_NAME))
    if values.get("model_type") == "encoder-decoder":
        return models.EncoderDecoderModel
    architectures = " ".join(values.get("architectures") or [])
    is_decoder = values.get("is_decoder") or any(w in architectures for w in ("Decoder", "LMHead", "CausalLM"))
    if values.get("model_type") in ("bert", "roberta"):  # BertModel / BertLMHeadModel, RobertaModel / ...ForCausalLM
        from ..models import AUTO_CLASSES

        return AUTO_CLASSES[values["model_type"]][1 if is_decoder else 0]
    if is_decoder:
        return models.BertGenerationDecoder
    return models.BertGenerationEncoder
