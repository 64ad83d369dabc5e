"""`bertgen export` + `load_exported`: the serialized generate runs without flax or the model code and
gives model.generate's tokens and the pipeline's texts; artifacts this JAX cannot run are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bertgen_jax import EncoderDecoderModel, pipeline
from bertgen_jax.serving import ExportError, OptionError, load_exported

from conftest import batch, wordpiece_bert2bert

TEXTS = ["The cat sat on the mat.", "JAX compiles the loop once.", "Short one.", "A fourth, longer input sentence.",
         "Five."]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # subprocesses import this checkout
ENV = dict(os.environ,
           PYTHONPATH=os.pathsep.join([ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir):
    """A tiny bert2bert over MiniLM's real WordPiece vocab, with its tokenizer files beside it."""
    return wordpiece_bert2bert(str(tmp_path_factory.mktemp("b2b")), minilm_dir, seed=120)[0]


@pytest.fixture(scope="module")
def export_dir(model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exports") / "cpu_cuda_tpu")
    result = subprocess.run(
        [sys.executable, "-m", "bertgen_jax.cli", "export", "--model", model_dir, "--out", out, "--batch-sizes", "1,4",
         "--max-input-length", "32", "--max-new-tokens", "8", "--num-beams", "1,3", "--platforms", "cpu,cuda,tpu"],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "8 program(s) for cpu, cuda, tpu" in result.stdout
    return out


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bertgen_jax.serving import load_exported

    directory, ids, mask, texts = json.loads(sys.stdin.read())
    model = load_exported(directory)
    out = {"modules": [m for m in ("flax", "bertgen_jax.modules", "bertgen_jax.models", "bertgen_jax.generation",
                                   "torch", "transformers") if m in sys.modules]}
    greedy = model.generate_ids(np.asarray(ids), np.asarray(mask), max_new_tokens=8)
    beam = model.generate_ids(np.asarray(ids), np.asarray(mask), max_new_tokens=8, num_beams=3)
    out["greedy"] = greedy.sequences.tolist()
    out["beam"], out["beam_scores"] = beam.sequences.tolist(), beam.sequences_scores.tolist()
    out["texts_greedy"] = model.generate(texts, max_new_tokens=8)
    out["texts_beam"] = model.generate(texts, max_new_tokens=8, num_beams=3)
    out["modules_after"] = [m for m in ("flax", "bertgen_jax.modules", "bertgen_jax.models",
                                        "bertgen_jax.generation") if m in sys.modules]
    print(json.dumps(out))
""")


def test_round_trip_in_a_fresh_process_without_the_model_code(model_dir, export_dir):
    ids, mask = batch(seed=4, batch_size=3, length=9, vocab=1000)
    ids[:, 0] = 101
    result = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps([export_dir, ids.tolist(), mask.tolist(),
                                                                            TEXTS]),
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["modules"] == [] and out["modules_after"] == []

    model = EncoderDecoderModel.from_pretrained(model_dir)
    greedy = model.generate(ids, mask, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(out["greedy"]), np.asarray(greedy.sequences))
    beam = model.generate(ids, mask, max_new_tokens=8, num_beams=3)
    np.testing.assert_array_equal(np.asarray(out["beam"]), np.asarray(beam.sequences))
    np.testing.assert_allclose(np.asarray(out["beam_scores"]), np.asarray(beam.sequences_scores), rtol=1e-6)

    pipe = pipeline("text2text-generation", model=model_dir)
    assert out["texts_greedy"] == pipe(TEXTS, max_new_tokens=8, num_beams=1)
    assert out["texts_beam"] == pipe(TEXTS, max_new_tokens=8, num_beams=3)


def test_manifest_records_versions_buckets_and_options(export_dir, model_dir):
    import jax

    with open(os.path.join(export_dir, "bertgen_export.json")) as handle:
        manifest = json.load(handle)
    assert manifest["jax_version"] == jax.__version__
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
    assert manifest["batch_sizes"] == [1, 4] and manifest["input_lengths"] == [16, 32]
    assert [s["options"]["num_beams"] for s in manifest["option_sets"]] == [1, 3]
    assert all(s["options"]["max_new_tokens"] == 8 and s["max_length"] == 9 for s in manifest["option_sets"])
    assert {"tokenizer.json", "vocab.txt", "config.json"} <= set(os.listdir(export_dir))
    assert "model.safetensors" not in os.listdir(export_dir)  # weights live in params.safetensors only
    from safetensors.numpy import load_file

    params = load_file(os.path.join(export_dir, "params.safetensors"))
    model = EncoderDecoderModel.from_pretrained(model_dir)
    embedding = np.asarray(model.params["decoder"]["bert"]["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(params["decoder/bert/embeddings/word_embeddings/embedding"], embedding)
    # The weights are arguments, not constants folded into the programs.
    program_bytes = sum(os.path.getsize(os.path.join(export_dir, p["file"])) for p in manifest["programs"])
    assert program_bytes < embedding.nbytes


def test_options_and_inputs_outside_the_export_are_clear_errors(export_dir):
    model = load_exported(export_dir)
    with pytest.raises(OptionError, match="max_new_tokens=9 was not exported") as err:
        model.generate("hello", max_new_tokens=9)
    assert err.value.field == "max_new_tokens"
    with pytest.raises(OptionError, match="num_beams=2 was not exported"):
        model.generate("hello", max_new_tokens=8, num_beams=2)
    with pytest.raises(OptionError, match="num_return_sequences=2 was not exported"):
        model.generate("hello", max_new_tokens=8, num_beams=3, num_return_sequences=2)
    with pytest.raises(OptionError, match="unknown generation option 'beams'"):
        model.generate("hello", beams=2)
    with pytest.raises(OptionError, match="num_beams must be a positive integer"):
        model.generate("hello", num_beams=0)
    with pytest.raises(ValueError, match="has 37 tokens; this export takes at most 32"):
        model.generate(" ".join(["word"] * 35), max_new_tokens=8)
    # Sampling knobs do not change greedy output: transformers ignores them there, so does the loader.
    assert model.generate("hello", max_new_tokens=8, temperature=0.5) == model.generate("hello", max_new_tokens=8)


def _copy(export_dir, tmp_path, name):
    target = str(tmp_path / name)
    shutil.copytree(export_dir, target)
    return target


def test_artifacts_this_jax_cannot_run_say_to_reexport(export_dir, tmp_path):
    from jax import export as jax_export

    newer = _copy(export_dir, tmp_path, "newer")
    path = os.path.join(newer, "bertgen_export.json")
    manifest = json.load(open(path))
    manifest["calling_convention_version"] = jax_export.maximum_supported_calling_convention_version + 1
    manifest["jax_version"] = "99.0.0"
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ExportError, match=r"exported by JAX 99\.0\.0 .*re-export it with `bertgen export`"):
        load_exported(newer)

    corrupt = _copy(export_dir, tmp_path, "corrupt")
    program = os.path.join(corrupt, manifest["programs"][0]["file"])
    with open(program, "wb") as handle:
        handle.write(b"\x00" * 64)
    with pytest.raises(ExportError, match="cannot be read by this JAX.*re-export"):
        load_exported(corrupt)

    with pytest.raises(ExportError, match="not a `bertgen export` directory"):
        load_exported(str(tmp_path))


def test_export_for_other_platforms_only_is_refused_here_and_cli_errors(model_dir, tmp_path):
    out = str(tmp_path / "tpu_only")
    result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "export", "--model", model_dir, "--out", out,
                             "--batch-sizes", "1", "--max-input-length", "16", "--max-new-tokens", "4",
                             "--platforms", "tpu"], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    with pytest.raises(ExportError, match="exported for tpu; this JAX runs on cpu: re-export with .*--platforms cpu"):
        load_exported(out)
    for extra, message in ((["--out", out], "exists and is not empty"),
                           (["--out", str(tmp_path / "x"), "--platforms", "metal"], "choose among cpu"),
                           (["--out", str(tmp_path / "y"), "--max-input-length", "41"], "must be in [1, 40]"),
                           (["--out", str(tmp_path / "z"), "--batch-sizes", "0"], "positive integers")):
        result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "export", "--model", model_dir] + extra,
                                capture_output=True, text=True, env=ENV, timeout=120)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".export-")] == []  # no half-written staging dirs


def test_option_names_are_generates():
    from bertgen_jax.generation import GENERATION_DEFAULTS
    from bertgen_jax.serving.options import OPTION_KINDS
    from bertgen_jax.serving.program import RECORDED_OPTIONS

    assert set(OPTION_KINDS) == set(GENERATION_DEFAULTS) == set(RECORDED_OPTIONS)


def test_sampling_export_takes_the_prng_key_as_model_generate(model_dir, tmp_path):
    import jax

    from bertgen_jax.serving.export import export_model

    sampling = {"max_new_tokens": 6, "do_sample": True, "top_k": 20, "top_p": 0.9, "temperature": 0.8}
    out = str(tmp_path / "sampling")
    model = EncoderDecoderModel.from_pretrained(model_dir)
    export_model(model_dir, out, batch_sizes=[4], max_input_length=16, option_sets=[sampling], model=model)
    ids, mask = batch(seed=5, batch_size=3, length=9, vocab=1000)
    exported = load_exported(out)
    for seed in (0, 7):
        key = jax.random.PRNGKey(seed)
        expected = model.generate(ids, mask, prng_key=key, **sampling).sequences
        np.testing.assert_array_equal(exported.generate_ids(ids, mask, prng_key=key, **sampling).sequences,
                                      np.asarray(expected))
    with pytest.raises(ValueError, match="do_sample=True needs prng_key"):
        exported.generate_ids(ids, mask, **sampling)
    with pytest.raises(OptionError, match="temperature=0.5 was not exported"):
        exported.generate_ids(ids, mask, prng_key=jax.random.PRNGKey(0), **dict(sampling, temperature=0.5))
