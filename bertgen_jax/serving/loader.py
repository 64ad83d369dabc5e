"""`load_exported(DIR)`: run a `bertgen export` directory with JAX alone (no flax, no model code).

`ExportedModel.generate(texts, **options)` answers like `pipeline("text2text-generation")(texts,
**options)` for the option sets the export was made with; `generate_ids(input_ids, attention_mask,
**options)` returns what `model.generate` returns. Inputs are padded to the exported buckets as
`model.generate` pads them (zeros after the text, extra rows copying the first), so the same
programs run on the same shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any, Optional, Sequence, Union

import jax
import numpy as np

from .export import FORMAT_VERSION, MANIFEST_NAME
from .options import OptionError, match_option_set


class ExportError(RuntimeError):
    """An export directory this installation cannot run (missing files, another JAX, another platform)."""


@dataclasses.dataclass
class ExportedOutput:
    """As `model.generate`'s output: `sequences` int32 [B * num_return_sequences, L]; `sequences_scores`
    float32 [B * num_return_sequences] for beam search."""

    sequences: np.ndarray
    sequences_scores: Optional[np.ndarray] = None


def _reexport(directory: str, manifest: dict, why: str) -> ExportError:
    return ExportError(f"{directory} was exported by JAX {manifest.get('jax_version', '?')} and {why}: re-export it "
                       f"with `bertgen export` under this JAX ({jax.__version__})")


class ExportedModel:
    def __init__(self, directory: str):
        from jax import export as jax_export
        from safetensors.numpy import load_file

        from ..tokenization import AutoTokenizer

        self.directory = directory
        path = os.path.join(directory, MANIFEST_NAME)
        if not os.path.isfile(path):
            raise ExportError(f"{directory} is not a `bertgen export` directory: no {MANIFEST_NAME}")
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        self.manifest = manifest
        if manifest.get("format") != "bertgen-export" or not isinstance(manifest.get("format_version"), int):
            raise ExportError(f"{path} is not a bertgen export manifest")
        if manifest["format_version"] > FORMAT_VERSION:
            raise _reexport(directory, manifest, f"uses export format {manifest['format_version']}, newer than this "
                                                 f"bertgen_jax reads ({FORMAT_VERSION})")
        version = manifest.get("calling_convention_version")
        low = jax_export.minimum_supported_calling_convention_version
        high = jax_export.maximum_supported_calling_convention_version
        if not isinstance(version, int) or not low <= version <= high:
            raise _reexport(directory, manifest, f"uses calling convention {version}; this JAX runs {low}..{high}")
        platform = jax_export.default_export_platform()
        if platform not in manifest["platforms"]:
            raise ExportError(f"{directory} was exported for {', '.join(manifest['platforms'])}; this JAX runs on "
                              f"{platform}: re-export with `bertgen export --platforms {platform}`")
        self._programs = {}
        for entry in manifest["programs"]:
            with open(os.path.join(directory, entry["file"]), "rb") as handle:
                data = handle.read()
            try:
                exported = jax_export.deserialize(bytearray(data))
            except Exception as err:  # noqa: BLE001 - any failure here means: not readable by this JAX
                raise _reexport(directory, manifest, f"its program {entry['file']} cannot be read by this JAX "
                                                     f"({type(err).__name__}: {err})") from err
            key = (entry["option_set"], entry["batch_size"], entry["input_length"])
            self._programs[key] = jax.jit(exported.call)
        self.params = {name: jax.device_put(value)
                       for name, value in load_file(os.path.join(directory, manifest["params_file"])).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.option_sets = manifest["option_sets"]
        self.batch_sizes = list(manifest["batch_sizes"])
        self.input_lengths = list(manifest["input_lengths"])
        self.max_input_length = int(manifest["max_input_length"])
        self.encoder_max_positions = int(manifest["encoder_max_position_embeddings"])
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ options and shapes
    def option_set(self, options: dict) -> int:
        """Which exported option set `options` select (OptionError naming the field if none)."""
        return match_option_set(self.option_sets, {k: v for k, v in options.items() if k != "prng_key"})

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated where the pipeline truncates (the encoder's max positions)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.encoder_max_positions)
        return [list(ids) for ids in encoded["input_ids"]]

    def check_length(self, length: int, what: str = "input") -> None:
        if length > self.max_input_length:
            raise ValueError(f"{what} has {length} tokens; this export takes at most {self.max_input_length} "
                             f"(re-export with a larger --max-input-length)")

    def warmup(self) -> int:
        """Compile every exported program now (a run on a dummy input each), so no request waits for a
        compile. Returns the number of programs."""
        for (set_index, batch, width), program in sorted(self._programs.items()):
            ids = np.zeros((batch, width), np.int32)
            mask = np.zeros((batch, width), np.int32)
            mask[:, 0] = 1
            jax.block_until_ready(program(self.params, ids, mask, np.zeros((2,), np.uint32)))
        return len(self._programs)

    # ------------------------------------------------------------------ generate
    def generate_ids(self, input_ids, attention_mask=None, *, prng_key=None, **options) -> ExportedOutput:
        """`model.generate(input_ids, attention_mask, **options)` for an exported option set."""
        set_index = self.option_set(options)
        option_set = self.option_sets[set_index]
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, length] with both > 0, got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids has {ids.shape}")
        self.check_length(ids.shape[1], "input_ids")
        if option_set["options"].get("do_sample"):
            if prng_key is None:
                raise ValueError("do_sample=True needs prng_key (a jax.random key), so results are reproducible")
            dtype = getattr(prng_key, "dtype", None)
            typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
            rng = np.asarray(jax.random.key_data(prng_key) if typed else prng_key)
            if rng.shape != (2,) or rng.dtype != np.uint32:
                raise ValueError(f"prng_key must be a jax.random key (jax.random.PRNGKey(seed)), got shape "
                                 f"{rng.shape} dtype {rng.dtype}")
        else:
            rng = np.zeros((2,), np.uint32)  # unused by greedy and beam search
        largest = self.batch_sizes[-1]
        sequences, scores = [], []
        for start in range(0, ids.shape[0], largest):
            out = self._run(set_index, ids[start:start + largest], mask[start:start + largest], rng)
            sequences.append(out.sequences)
            scores.append(out.sequences_scores)
        width = max(s.shape[1] for s in sequences)
        pad = int(option_set["options"]["pad_token_id"] if option_set["options"]["pad_token_id"] is not None
                  else np.ravel(option_set["options"]["eos_token_id"])[0])
        sequences = np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1])), constant_values=pad)
                                    for s in sequences])
        return ExportedOutput(sequences, None if scores[0] is None else np.concatenate(scores))

    def _run(self, set_index: int, ids: np.ndarray, mask: np.ndarray, rng: np.ndarray) -> ExportedOutput:
        rows, length = ids.shape
        batch = next(b for b in self.batch_sizes if b >= rows)
        width = next(s for s in self.input_lengths if s >= length)
        ids_b = np.zeros((batch, width), np.int32)
        mask_b = np.zeros((batch, width), np.int32)
        ids_b[:rows, :length], mask_b[:rows, :length] = ids, mask
        ids_b[rows:], mask_b[rows:] = ids_b[0], mask_b[0]  # extra rows copy the first: they finish with it
        with self._lock:
            program = self._programs[(set_index, batch, width)]
        out = jax.device_get(program(self.params, ids_b, mask_b, rng))
        keep = rows * self.option_sets[set_index]["num_return_sequences"]
        sequences = np.asarray(out["sequences"])[:keep, :int(out["length"])]
        scores = np.asarray(out["scores"])[:keep] if "scores" in out else None
        return ExportedOutput(sequences, scores)

    def generate(self, inputs: Union[str, Sequence[str]], *, batch_size: Optional[int] = None,
                 truncation: bool = True, **options: Any):
        """What `pipeline("text2text-generation")(inputs, **options)` returns."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("input must be a string or a non-empty list of strings")
        set_index = self.option_set(options)
        num_return = self.option_sets[set_index]["num_return_sequences"]
        size = min(int(batch_size or 8), self.batch_sizes[-1])
        results = []
        for start in range(0, len(texts), size):
            chunk = texts[start:start + size]
            encoded = self.tokenizer(chunk, padding=True, truncation=truncation,
                                     max_length=self.encoder_max_positions, return_tensors="np")
            out = self.generate_ids(encoded["input_ids"], encoded["attention_mask"], **options)
            decoded = self.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
            for row in range(len(chunk)):
                results.append([{"generated_text": t} for t in decoded[row * num_return:(row + 1) * num_return]])
        return [r[0] for r in results] if num_return == 1 else results


def load_exported(directory: str) -> ExportedModel:
    """Load a `bertgen export` directory (ExportError, saying to re-export, if this JAX cannot run it)."""
    return ExportedModel(os.fspath(directory))


__all__ = ["ExportError", "ExportedModel", "ExportedOutput", "OptionError", "load_exported"]
