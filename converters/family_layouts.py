"""Checkpoint layouts for the BERT / RoBERTa members of the family (transformers 4.56.2).

Targets and their key layouts (the Flax tree uses the same names):

- BertModel / RobertaModel (an EncoderDecoderModel's `encoder.`): `embeddings.{word,position,
  token_type}_embeddings`, `embeddings.LayerNorm`, `encoder.layer.*`, `pooler.dense`.
- BertLMHeadModel: `bert.` + the stack (no pooler), `cls.predictions.{bias, transform.dense,
  transform.LayerNorm}` (`cls.predictions.decoder.weight` is the tied word embeddings,
  `cls.predictions.decoder.bias` the tied bias).
- RobertaForCausalLM: `roberta.` + the stack (no pooler), `lm_head.{bias, dense, layer_norm}`
  (`lm_head.decoder.weight` tied to the word embeddings, `lm_head.decoder.bias` to `lm_head.bias`).

Sources: any of the above, bare or prefixed, and the pre-training / masked-LM classes
(BertForPreTraining, BertForMaskedLM, RobertaForMaskedLM), as transformers' `from_pretrained`
loads them into these classes: keys of heads the target lacks are dropped with a reason; weights
the target has and the source lacks (cross-attention, pooler, LM head) are created as transformers
creates them and listed in the report.
"""

from __future__ import annotations

import re

from .mapping import (
    ConversionReport,
    CheckpointKeyError,
    detect_base_prefix,
    normalize_legacy_names,
    split_drops,
)

BUFFER_RULES = (
    (re.compile(r"(^|\.)embeddings\.position_ids$"), "position_ids buffer (positions are computed)"),
    (re.compile(r"(^|\.)embeddings\.token_type_ids$"), "token_type_ids buffer (zeros, rebuilt)"),
)
HEAD_PREFIX = {"bert": "cls.", "roberta": "lm_head."}
BASE_NAME = {"bert": "bert", "roberta": "roberta"}


def is_family(config) -> bool:
    return getattr(config, "model_type", None) in BASE_NAME


def _split(state_dict, report: ConversionReport):
    """(stack keys without the base prefix, every other key) of a BERT/RoBERTa-style checkpoint."""
    state_dict = split_drops(normalize_legacy_names(state_dict), BUFFER_RULES, report)
    prefix = detect_base_prefix(state_dict)
    stack, rest = {}, {}
    for key, value in state_dict.items():
        if prefix and key.startswith(prefix):
            stack[key[len(prefix):]] = value
        elif not prefix and key.startswith(("embeddings.", "encoder.", "pooler.")):
            stack[key] = value
        else:
            rest[key] = value
    return stack, rest


def _check_no_cross(stack, config):
    if not config.add_cross_attention:
        crossed = [k for k in stack if ".crossattention." in k]
        if crossed:
            raise CheckpointKeyError(
                f"checkpoint has cross-attention weights ({crossed[0]} ...) but the config has "
                f"add_cross_attention=False; load it as a decoder or pass add_cross_attention=True")


def family_encoder_layout(state_dict, config, report: ConversionReport):
    """Keys for BertModel / RobertaModel with its pooler; returns (state_dict, may_initialize)."""
    stack, rest = _split(state_dict, report)
    for key in rest:
        report.dropped.append((key, f"head of a pre-training / LM checkpoint: {config.model_type} encoder has none"))
    _check_no_cross(stack, config)
    has_pooler = any(k.startswith("pooler.") for k in stack)
    has_cross = any(".crossattention." in k for k in stack)

    def may_initialize(path: tuple) -> bool:
        # transformers' BertModel(add_pooling_layer=True) creates a pooler a masked-LM checkpoint lacks.
        return (path[0] == "pooler" and not has_pooler) or ("crossattention" in path and not has_cross)

    return stack, may_initialize


def family_decoder_layout(state_dict, config, report: ConversionReport):
    """Keys for BertLMHeadModel / RobertaForCausalLM; returns (state_dict, may_initialize)."""
    model_type = config.model_type
    base, head = BASE_NAME[model_type], HEAD_PREFIX[model_type]
    stack, rest = _split(state_dict, report)
    out = {}
    for key, value in stack.items():
        if key.startswith("pooler."):
            report.dropped.append((key, f"pooler: the {model_type} decoder is built without one"))
        else:
            out[f"{base}.{key}"] = value
    heads = {}
    for key, value in rest.items():
        if key.startswith(head) and not key.startswith("cls.seq_relationship."):
            heads[key] = value
        else:
            report.dropped.append((key, f"not part of the {model_type} causal-LM decoder (other head)"))
    projection = f"{head}predictions.decoder." if model_type == "bert" else f"{head}decoder."
    bias_key = f"{head}predictions.bias" if model_type == "bert" else f"{head}bias"
    if config.tie_word_embeddings and projection + "weight" in heads:
        report.tied.append((projection + "weight", f"{base}.embeddings.word_embeddings.weight"))
        heads.pop(projection + "weight")
    if projection + "bias" in heads:
        bias = heads.pop(projection + "bias")
        if bias_key in heads:
            report.tied.append((projection + "bias", bias_key))
        else:
            heads[bias_key] = bias
    out.update(heads)
    has_cross = any(".crossattention." in k for k in stack)
    has_head = bool(heads)
    head_root = head.rstrip(".")

    def may_initialize(path: tuple) -> bool:
        if "crossattention" in path and not has_cross:
            return True
        return path[0] == head_root and not has_head

    return out, may_initialize
