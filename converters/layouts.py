"""Checkpoint layouts -> this project's key layout, per target model.

Sources handled: transformers' BertGenerationEncoder (bare), BertGenerationDecoder (`bert.` +
`lm_head.`), EncoderDecoderModel (`encoder.` / `decoder.` / `enc_to_dec_proj.`), BertModel (bare,
with pooler and token types), BertForMaskedLM / BertForPreTraining (`bert.` + `cls.`), RobertaModel
(bare) and RobertaForMaskedLM (`roberta.` + an MLM `lm_head`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .mapping import (
    DROP_RULES,
    ConversionReport,
    CheckpointKeyError,
    detect_base_prefix,
    normalize_legacy_names,
    split_drops,
    strip_prefix,
)

PathPredicate = Callable[[tuple], bool]


def _has_bertgen_lm_head(keys) -> bool:
    # BertGeneration's head is a plain projection; RoBERTa's MLM head has lm_head.dense / layer_norm.
    keys = set(keys)
    has_head = "lm_head.bias" in keys or "lm_head.decoder.weight" in keys or "lm_head.decoder.bias" in keys
    return has_head and "lm_head.dense.weight" not in keys


def stack_state_dict(state_dict: dict[str, np.ndarray], report: ConversionReport, *, what: str
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Bring any supported layout to a bare stack (`embeddings.*`, `encoder.*`).

    Returns (stack keys, head keys): head keys are `lm_head.*` of a BertGeneration decoder,
    kept apart so the caller decides whether the target uses them.
    """
    state_dict = normalize_legacy_names(state_dict)
    prefix = detect_base_prefix(state_dict)
    heads: dict[str, np.ndarray] = {}
    stack = {}
    for key, value in state_dict.items():
        if prefix and key.startswith(prefix):
            stack[key[len(prefix):]] = value
        elif key.startswith("lm_head."):
            heads[key] = value
        elif prefix == "" and (key.startswith("embeddings.") or key.startswith("encoder.")):
            stack[key] = value
        else:
            stack[key] = value  # left for the drop rules, or reported as unexpected
    if heads and not _has_bertgen_lm_head(heads):
        for key in heads:
            report.dropped.append((key, "RoBERTa masked-LM head (lm_head.dense/layer_norm): not BertGeneration's LM head"))
        heads = {}
    stack = split_drops(stack, DROP_RULES, report)
    return stack, heads


def encoder_layout(state_dict, config, report: ConversionReport):
    """Keys for BertGenerationEncoder; returns (state_dict, may_initialize)."""
    stack, heads = stack_state_dict(state_dict, report, what="encoder")
    for key in heads:
        report.dropped.append((key, "LM head: BertGenerationEncoder has none"))
    if not config.add_cross_attention:
        crossed = [k for k in stack if ".crossattention." in k]
        if crossed:
            raise CheckpointKeyError(
                f"checkpoint has cross-attention weights ({crossed[0]} ...) but the config has "
                f"add_cross_attention=False; load it as a decoder or pass add_cross_attention=True"
            )
    return stack, _warm_start_predicate(stack, heads, with_head=False)


def decoder_layout(state_dict, config, report: ConversionReport):
    """Keys for BertGenerationDecoder (`bert.*`, `lm_head.*`); returns (state_dict, may_initialize)."""
    stack, heads = stack_state_dict(state_dict, report, what="decoder")
    out = {"bert." + k: v for k, v in stack.items()}
    if config.tie_word_embeddings and "lm_head.decoder.weight" in heads:
        report.tied.append(("lm_head.decoder.weight", "bert.embeddings.word_embeddings.weight"))
        heads.pop("lm_head.decoder.weight")
    if "lm_head.decoder.bias" in heads:
        # transformers' forward is `self.decoder(hidden)`: lm_head.decoder.bias is the bias it adds.
        # Tied (4.x) both keys hold one tensor; untied (transformers 5 saves two) they may differ.
        bias = heads.pop("lm_head.decoder.bias")
        other = heads.get("lm_head.bias")
        if other is None or np.array_equal(np.asarray(other), np.asarray(bias)):
            if other is not None:
                report.tied.append(("lm_head.decoder.bias", "lm_head.bias"))
        else:
            report.dropped.append(("lm_head.bias", "differs from lm_head.decoder.bias, the bias transformers' "
                                                   "forward adds; that one is kept"))
        heads["lm_head.bias"] = bias
    out.update(heads)
    return out, _warm_start_predicate(stack, heads, with_head=True)


def _warm_start_predicate(stack, heads, *, with_head: bool) -> PathPredicate:
    """Which missing weights may be created (as transformers' warm start does) for this source."""
    source_has_cross = any(".crossattention." in k for k in stack)
    source_has_head = bool(heads)

    def may_initialize(path: tuple) -> bool:
        if "crossattention" in path and not source_has_cross:
            return True
        if with_head and path[0] == "lm_head" and not source_has_head:
            return True
        return False

    return may_initialize


def encoder_decoder_layout(state_dict, config, report: ConversionReport):
    """Keys for EncoderDecoderModel; returns (state_dict, may_initialize)."""
    unknown = [k for k in state_dict if not k.startswith(("encoder.", "decoder.", "enc_to_dec_proj."))]
    if unknown:
        raise CheckpointKeyError(
            f"not an EncoderDecoderModel checkpoint: {len(unknown)} key(s) outside encoder./decoder./enc_to_dec_proj., "
            f"e.g. {unknown[0]!r}; warm-start plain checkpoints with from_encoder_decoder_pretrained"
        )
    from .family_layouts import family_decoder_layout, family_encoder_layout, is_family

    # Each side follows its own sub-config's model_type (mixed pairs load as transformers builds them).
    layout = family_decoder_layout if is_family(config.decoder) else decoder_layout
    decoder_sd, decoder_init = layout(strip_prefix(state_dict, "decoder."), config.decoder, report)
    out = {"decoder." + k: v for k, v in decoder_sd.items()}
    encoder_sd = strip_prefix(state_dict, "encoder.")
    if config.tie_encoder_decoder:
        # The encoder is the decoder's stack (transformers' _tie_encoder_decoder_weights); a 4.x
        # safetensors save may lack every encoder.* key.
        base = "roberta" if getattr(config.decoder, "model_type", None) == "roberta" else "bert"
        for key, value in encoder_sd.items():
            if key.startswith("pooler.") and is_family(config.encoder):
                out["encoder." + key] = value  # BertModel's pooler has no decoder counterpart: not tied
            else:
                report.dropped.append(("encoder." + key, f"tied to decoder.{base}.* (tie_encoder_decoder)"))
        encoder_init = lambda path: path[0] == "pooler" and not any(k.startswith("pooler.") for k in encoder_sd)
    else:
        layout = family_encoder_layout if is_family(config.encoder) else encoder_layout
        encoder_sd, encoder_init = layout(encoder_sd, config.encoder, report)
        out.update({"encoder." + k: v for k, v in encoder_sd.items()})
    out.update({k: v for k, v in state_dict.items() if k.startswith("enc_to_dec_proj.")})

    def may_initialize(path: tuple) -> bool:
        if path[0] == "encoder" and is_family(config.encoder):
            return encoder_init(path[1:])  # only BertModel's pooler, when the checkpoint has none
        return path[0] == "decoder" and decoder_init(path[1:])

    return out, may_initialize


def expand_tied_encoder(params: dict) -> dict:
    """With tie_encoder_decoder the tree's `encoder` entry holds only untied parts (BertModel's pooler,
    if any): build the rest from the decoder's stack (`decoder/bert` or `decoder/roberta`)."""
    bert = params["decoder"]["roberta" if "roberta" in params["decoder"] else "bert"]
    layers = {name: {k: v for k, v in layer.items() if k != "crossattention"}
              for name, layer in bert["encoder"].items()}
    return {**params, "encoder": {"embeddings": bert["embeddings"], "encoder": layers, **params.get("encoder", {})}}
