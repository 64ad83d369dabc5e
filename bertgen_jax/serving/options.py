"""Generation options by their transformers names: type checks for requests, and matching a request's
options with the option sets an export was made with. Plain Python: no JAX, no model code."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

# name -> kind; the same names as generation.GENERATION_DEFAULTS (a test keeps them equal).
OPTION_KINDS = {
    "max_length": "positive_int", "max_new_tokens": "positive_int", "min_length": "int", "min_new_tokens": "int",
    "do_sample": "bool", "temperature": "positive_float", "top_k": "int", "top_p": "probability",
    "num_beams": "positive_int", "length_penalty": "float", "early_stopping": "early_stopping",
    "no_repeat_ngram_size": "int", "repetition_penalty": "positive_float", "num_return_sequences": "positive_int",
    "decoder_start_token_id": "int", "bos_token_id": "int", "eos_token_id": "token_ids", "pad_token_id": "int",
}
# Options with no effect unless sampling (transformers ignores them, with a warning, when greedy).
SAMPLING_ONLY = ("temperature", "top_k", "top_p")


class OptionError(ValueError):
    """A bad generation option; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_option(name: str, value: Any) -> Any:
    """The value if it has the right type and range, else OptionError naming the option."""
    kind = OPTION_KINDS.get(name)
    if kind is None:
        raise OptionError(name, f"unknown generation option {name!r}; known: {', '.join(sorted(OPTION_KINDS))}")
    ok = {
        "int": lambda v: _is_int(v) and v >= 0,
        "positive_int": lambda v: _is_int(v) and v >= 1,
        "bool": lambda v: isinstance(v, bool),
        "float": _is_number,
        "positive_float": lambda v: _is_number(v) and v > 0,
        "probability": lambda v: _is_number(v) and 0 < v <= 1,
        "early_stopping": lambda v: isinstance(v, bool) or v == "never",
        "token_ids": lambda v: (_is_int(v) and v >= 0) or (isinstance(v, list) and all(_is_int(t) and t >= 0
                                                                                        for t in v)),
    }[kind]
    if not ok(value):
        expected = {"int": "a non-negative integer", "positive_int": "a positive integer", "bool": "true or false",
                    "float": "a finite number", "positive_float": "a positive number",
                    "probability": "a number in (0, 1]", "early_stopping": 'true, false or "never"',
                    "token_ids": "a token id or a list of token ids"}[kind]
        raise OptionError(name, f"{name} must be {expected}, got {value!r}")
    return value


def check_options(options: dict) -> dict:
    return {name: check_option(name, value) for name, value in options.items() if value is not None}


def _normalized(name: str, value: Any) -> Any:
    if name == "eos_token_id" and value is not None:
        return sorted(set(value if isinstance(value, list) else [value]))
    if isinstance(value, float) and value.is_integer() and OPTION_KINDS.get(name, "").endswith("float"):
        return float(value)
    return value


def match_option_set(option_sets: Sequence[dict], options: dict) -> int:
    """The index of the exported option set that `options` select, or OptionError naming the field
    that no exported set has (with the values that were exported)."""
    options = check_options(options)
    closest: Optional[list] = None  # the mismatching names of the set that comes closest
    for index, option_set in enumerate(option_sets):
        exported = option_set["options"]
        mismatches = [name for name, value in options.items()
                      if not (name in SAMPLING_ONLY and not exported.get("do_sample") and not options.get("do_sample"))
                      and _normalized(name, value) != _normalized(name, exported.get(name))]
        if not mismatches:
            return index
        if closest is None or len(mismatches) < len(closest):
            closest = mismatches
    field = closest[0] if closest else "parameters"
    exported_values = sorted({repr(s["options"].get(field)) for s in option_sets})
    raise OptionError(field, f"{field}={options.get(field)!r} was not exported (exported: "
                             f"{', '.join(exported_values)}); re-export with the options you need")
