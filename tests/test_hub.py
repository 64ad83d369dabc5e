"""Hub repo ids resolve through huggingface_hub's cache and offline mode (a cache built by the test)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from bertgen_jax import EncoderDecoderModel, load_config

from conftest import batch, tiny_encoder_decoder

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hub_cache(model_dir: str, cache_dir: str, repo_id: str, commit: str = COMMIT) -> None:
    """Lay files out as huggingface_hub does: models--org--name/{snapshots/<commit>, refs/main}."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    shutil.copytree(model_dir, snapshot)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(commit)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("model"))
    tm = tiny_encoder_decoder(seed=70)
    tm.save_pretrained(model_dir)
    cache_dir = str(tmp_path_factory.mktemp("hub"))
    build_hub_cache(model_dir, cache_dir, "acme/bert2bert-tiny")
    reference = EncoderDecoderModel.from_pretrained(model_dir)
    return cache_dir, reference


def _logits(model):
    ids, mask = batch(seed=71)
    return np.asarray(model(ids, mask, decoder_input_ids=ids[:, :3]).logits)


def test_repo_id_from_cache_local_files_only(hub):
    cache_dir, reference = hub
    model = EncoderDecoderModel.from_pretrained("acme/bert2bert-tiny", cache_dir=cache_dir, local_files_only=True)
    np.testing.assert_array_equal(_logits(model), _logits(reference))
    pinned = EncoderDecoderModel.from_pretrained("acme/bert2bert-tiny", cache_dir=cache_dir, revision=COMMIT,
                                                 local_files_only=True)
    np.testing.assert_array_equal(_logits(pinned), _logits(reference))


def test_hf_hub_offline_env(hub, monkeypatch):
    cache_dir, reference = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    model = EncoderDecoderModel.from_pretrained("acme/bert2bert-tiny")
    np.testing.assert_array_equal(_logits(model), _logits(reference))
    assert load_config("acme/bert2bert-tiny").decoder_start_token_id == 2


def test_uncached_repo_offline_is_a_clear_error(hub, monkeypatch):
    cache_dir, _ = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="acme/not-there"):
        EncoderDecoderModel.from_pretrained("acme/not-there", cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="acme/bert2bert-tiny"):
        EncoderDecoderModel.from_pretrained("acme/bert2bert-tiny", cache_dir=cache_dir, revision="v9",
                                            local_files_only=True)
