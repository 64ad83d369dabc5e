"""Text in, text out: pipeline("text2text-generation") and `bertgen generate` on a tiny saved model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bertgen_jax import AutoTokenizer, EncoderDecoderModel, pipeline

from conftest import wordpiece_bert2bert


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir):
    """A tiny bert2bert over MiniLM's real WordPiece vocab, with its tokenizer files beside it."""
    return wordpiece_bert2bert(str(tmp_path_factory.mktemp("b2b")), minilm_dir, seed=110)


TEXTS = ["The cat sat on the mat.", "JAX compiles the loop once.", "Short one."]


def test_pipeline_matches_transformers_generate_and_decode(model_dir):
    path, tm, tok = model_dir
    pipe = pipeline("text2text-generation", model=path)
    results = pipe(TEXTS, max_new_tokens=8, num_beams=2)
    assert [set(r) for r in results] == [{"generated_text"}] * 3
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = tm.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8, num_beams=2)
    expected = tok.batch_decode(ref, skip_special_tokens=True)
    assert [r["generated_text"] for r in results] == expected
    single = pipe(TEXTS[0], max_new_tokens=8, num_beams=2)
    assert single == [results[0]]
    several = pipe(TEXTS[:2], max_new_tokens=8, num_beams=3, num_return_sequences=2)
    assert len(several) == 2 and all(len(r) == 2 for r in several)


def test_pipeline_defaults_as_transformers_pipeline(model_dir, tmp_path):
    """transformers' text2text pipeline decodes with num_beams=4 / max_new_tokens=256 unless told
    otherwise, and a max_length in the model's generation config replaces its max_new_tokens."""
    import copy

    import transformers

    path, tm, tok = model_dir
    theirs = transformers.pipeline("text2text-generation", model=tm, tokenizer=tok)
    ours = pipeline("text2text-generation", model=path)
    texts = ["Rain again.", "Numbers: one two three.", "hello world"]  # inputs where 4 beams beat greedy
    assert ours(texts, max_new_tokens=8) == theirs(texts, max_new_tokens=8)
    assert ours(texts, max_new_tokens=8) != ours(texts, max_new_tokens=8, num_beams=1)  # the default matters here
    capped = copy.deepcopy(tm)
    capped.generation_config.max_length = 12
    capped.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    theirs = transformers.pipeline("text2text-generation", model=capped, tokenizer=tok)
    assert pipeline("text2text-generation", model=str(tmp_path))(texts) == theirs(texts)


def test_cli_generate_arguments_and_stdin(model_dir):
    path, _, _ = model_dir
    pipe = pipeline("text2text-generation", model=path)
    expected = [r["generated_text"] for r in pipe(TEXTS, max_new_tokens=6)]
    cmd = [sys.executable, "-m", "bertgen_jax.cli", "generate", "--model", path, "--max-new-tokens", "6"]
    out = subprocess.run(cmd + TEXTS, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == expected
    out = subprocess.run(cmd, input="\n".join(TEXTS) + "\n", capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == expected


def test_cli_generate_errors_are_one_line(tmp_path, model_dir):
    path, _, _ = model_dir
    result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "generate", "--model", str(tmp_path / "missing"),
                             "hello"], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "generate", "--model", path,
                             "--num-beams", "2", "--num-return-sequences", "3", "hi"], capture_output=True, text=True)
    assert result.returncode == 1 and "num_return_sequences" in result.stderr.strip().splitlines()[-1]
    assert len(result.stderr.strip().splitlines()) == 1
    result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "generate", "--model", path, "--num-beams",
                             "two", "hi"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_compilation_cache_variable_does_not_import_jax_with_the_package(tmp_path):
    """BERTGEN_COMPILATION_CACHE reaches JAX through JAX's own variables when the package is imported before
    JAX (the `bertgen` process that only re-executes itself need not import JAX); JAX then caches every
    program there."""
    cache = tmp_path / "xla"
    code = ("import sys, bertgen_jax; assert 'jax' not in sys.modules; import jax, jax.numpy as jnp; "
            "c = jax.config; print(c.jax_compilation_cache_dir, c.jax_persistent_cache_min_compile_time_secs, "
            "c.jax_persistent_cache_min_entry_size_bytes); jax.jit(lambda x: x * 3)(jnp.ones(2)).block_until_ready()")
    env = dict(os.environ, BERTGEN_COMPILATION_CACHE=str(cache))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(cache), "0.0", "0"]
    assert any(name.startswith("jit__lambda") for name in os.listdir(cache))


def test_persistent_compilation_cache_reused_across_processes(model_dir, tmp_path):
    """A second process with BERTGEN_COMPILATION_CACHE set loads the compiled loop from disk."""
    path, _, _ = model_dir
    cache = tmp_path / "xla"
    env = dict(os.environ, BERTGEN_COMPILATION_CACHE=str(cache))
    cmd = [sys.executable, "-m", "bertgen_jax.cli", "generate", "--model", path, "--max-new-tokens", "4", "hello"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    entries = set(os.listdir(cache))
    assert entries, "nothing was written to the compilation cache"
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert second.stdout == first.stdout
    assert set(os.listdir(cache)) == entries  # every program came from the cache: no new entries
