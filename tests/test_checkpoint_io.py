"""converters.checkpoint_io: reading transformers checkpoints, writing ones transformers loads, atomically."""

import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from converters import checkpoint_io as cio
from converters.checkpoint_io import (
    CheckpointError,
    atomic_write_text,
    find_weights_files,
    load_state_dict,
    parse_size,
    save_state_dict,
)

TIED = {"lm_head.decoder.weight", "lm_head.decoder.bias"}


def _tiny_config():
    return transformers.BertGenerationConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return transformers.BertGenerationDecoder(_tiny_config()).eval()


@pytest.fixture(scope="module")
def reference(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def hf_dirs(model, tmp_path_factory):
    """The tiny model saved by transformers itself, three ways."""
    root = tmp_path_factory.mktemp("hf")
    dirs = {
        "safetensors": root / "single",
        "safetensors-sharded": root / "sharded",
        "pytorch": root / "bin",
    }
    model.save_pretrained(dirs["safetensors"])
    model.save_pretrained(dirs["safetensors-sharded"], max_shard_size="20KB")
    model.save_pretrained(dirs["pytorch"], safe_serialization=False)
    return dirs


def _assert_same(loaded, expected, keys=None):
    keys = expected.keys() if keys is None else keys
    for key in keys:
        assert loaded[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(np.asarray(loaded[key], np.float32), np.asarray(expected[key], np.float32), key)


def _hf_state(directory, dtype=None):
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    hf, info = transformers.BertGenerationDecoder.from_pretrained(directory, output_loading_info=True, **kwargs)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    assert info["mismatched_keys"] == [] and info["error_msgs"] == [], info
    return hf.state_dict()


# ----------------------------------------------------------------------------- reading transformers' files


@pytest.mark.parametrize("kind", ["safetensors", "safetensors-sharded", "pytorch"])
def test_loads_what_transformers_saves(hf_dirs, reference, kind):
    found_kind, files = find_weights_files(hf_dirs[kind])
    assert found_kind == kind
    assert all(os.path.isfile(f) for f in files)
    loaded = load_state_dict(hf_dirs[kind])
    # transformers leaves tied copies out of safetensors; everything else must be there.
    assert set(reference) - TIED <= set(loaded) <= set(reference)
    _assert_same(loaded, reference, loaded.keys())
    assert all(v.dtype == np.float32 for v in loaded.values())
    # The file itself (not only the directory) is accepted too.
    _assert_same(load_state_dict(files[0]), reference, loaded.keys())


def test_sharded_files_listed(hf_dirs):
    kind, files = find_weights_files(hf_dirs["safetensors-sharded"])
    assert os.path.basename(files[0]) == "model.safetensors.index.json"
    shards = sorted(os.path.basename(f) for f in files[1:])
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"


def test_safetensors_path_does_not_import_torch(hf_dirs):
    code = textwrap.dedent(
        f"""
        import sys
        from converters.checkpoint_io import load_state_dict
        for d in {[str(hf_dirs["safetensors"]), str(hf_dirs["safetensors-sharded"])]!r}:
            assert len(load_state_dict(d)) > 10
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bin_tied_and_aliased_tensors(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"a": base, "tied": base, "view": base[1:], "t": base.t()}, tmp_path / "pytorch_model.bin")
    loaded = load_state_dict(tmp_path)
    np.testing.assert_array_equal(loaded["tied"], loaded["a"])
    np.testing.assert_array_equal(loaded["view"], base[1:].numpy())
    np.testing.assert_array_equal(loaded["t"], base.t().numpy())
    loaded["a"][0, 0] = 100.0  # each name owns its buffer
    assert loaded["tied"][0, 0] == 0 and loaded["t"][0, 0] == 0


def test_sharded_bin(tmp_path, reference):
    keys = list(reference)
    half = len(keys) // 2
    parts = {"pytorch_model-00001-of-00002.bin": keys[:half], "pytorch_model-00002-of-00002.bin": keys[half:]}
    for name, part in parts.items():
        torch.save({k: torch.from_numpy(reference[k]) for k in part}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: n for n, part in parts.items() for k in part}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    kind, files = find_weights_files(tmp_path)
    assert kind == "pytorch-sharded" and len(files) == 3
    _assert_same(load_state_dict(tmp_path), reference)


def test_preference_order(tmp_path):
    save_state_dict({"x": np.ones(2, np.float32)}, tmp_path)
    torch.save({"x": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    assert find_weights_files(tmp_path)[0] == "safetensors"
    np.testing.assert_array_equal(load_state_dict(tmp_path)["x"], [1, 1])


# ----------------------------------------------------------------------------- bfloat16


def test_bf16_safetensors_and_bin_keep_dtype(model, tmp_path):
    bf16 = transformers.BertGenerationDecoder(_tiny_config())
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    bf16.save_pretrained(tmp_path / "st")
    bf16.save_pretrained(tmp_path / "bin", safe_serialization=False)
    expected = {k: v.float().numpy() for k, v in bf16.state_dict().items()}
    for sub in ("st", "bin"):
        loaded = load_state_dict(tmp_path / sub)
        assert all(v.dtype == ml_dtypes.bfloat16 for v in loaded.values()), sub
        _assert_same(loaded, expected, loaded.keys())

    # bf16 arrays round-trip through our writer into transformers.
    save_state_dict(load_state_dict(tmp_path / "st"), tmp_path / "ours")
    bf16.config.save_pretrained(tmp_path / "ours")
    with safe_open(tmp_path / "ours" / "model.safetensors", framework="np") as f:
        assert f.get_slice("lm_head.bias").get_dtype() == "BF16"
    hf = _hf_state(tmp_path / "ours", dtype=torch.bfloat16)
    _assert_same({k: v.float().numpy() for k, v in hf.items()}, expected)


def test_jax_fallback_reader_handles_bf16(tmp_path):
    # Used when an older safetensors cannot give bf16 to numpy.
    arr = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    save_state_dict({"w": arr}, tmp_path)
    out = cio._get_tensor_via_jax(str(tmp_path / "model.safetensors"), "w")
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.astype(np.float32), arr.astype(np.float32))


# ----------------------------------------------------------------------------- writing


def test_round_trip_into_transformers(model, reference, tmp_path):
    files = save_state_dict(reference, tmp_path)
    assert files == [str(tmp_path / "model.safetensors")]
    model.config.save_pretrained(tmp_path)
    with safe_open(files[0], framework="np") as f:
        assert f.metadata()["format"] == "pt"
    _assert_same({k: v.numpy() for k, v in _hf_state(tmp_path).items()}, reference)
    _assert_same(load_state_dict(tmp_path), reference)


def test_sharded_save_matches_transformers_layout(model, reference, hf_dirs, tmp_path):
    hf_index = json.loads((hf_dirs["safetensors-sharded"] / "model.safetensors.index.json").read_text())
    # Same tensors, same order as transformers saw them (its tied copies left out).
    state = {k: v for k, v in reference.items() if k in hf_index["weight_map"]}
    files = save_state_dict(state, tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == hf_index["weight_map"]
    assert index["metadata"]["total_size"] == hf_index["metadata"]["total_size"]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files)
    model.config.save_pretrained(tmp_path)
    _assert_same({k: v.numpy() for k, v in _hf_state(tmp_path).items()}, reference)
    _assert_same(load_state_dict(tmp_path), state)


def test_one_shard_is_written_unsharded(tmp_path):
    save_state_dict({"a": np.ones(10, np.float32)}, tmp_path, max_shard_size="1MB")
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_switching_between_single_and_sharded_removes_stale_files(tmp_path):
    state = {f"t{i}": np.full(100, i, np.float32) for i in range(5)}
    save_state_dict(state, tmp_path, max_shard_size=800)
    assert "model.safetensors.index.json" in os.listdir(tmp_path)
    save_state_dict({k: v + 1 for k, v in state.items()}, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    save_state_dict(state, tmp_path, max_shard_size=800)
    assert "model.safetensors" not in os.listdir(tmp_path)  # it would shadow the new index
    _assert_same(load_state_dict(tmp_path), state)
    save_state_dict(state, tmp_path, max_shard_size=1200)  # 400-byte tensors, 3 + 2: old names go away
    assert sorted(os.listdir(tmp_path)) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                            "model.safetensors.index.json"]


def test_views_and_aliases_are_saved_correctly(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    state = {"base": base, "same": base, "transposed": base.T, "strided": base[:, ::2], "row": base[1],
             "scalar": np.float32(3.5), "empty": np.zeros((0, 3), np.float16), "ints": np.arange(3)}
    save_state_dict(state, tmp_path, metadata={"note": "x"})
    loaded = load_state_dict(tmp_path)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], np.asarray(value), key)
        assert loaded[key].dtype == np.asarray(value).dtype
    with safe_open(tmp_path / "model.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}


def test_rejects_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="'names'"):
        save_state_dict({"names": np.array(["a", "b"])}, tmp_path)
    with pytest.raises(TypeError):
        save_state_dict({1: np.ones(1)}, tmp_path)
    with pytest.raises(ValueError, match="size"):
        save_state_dict({"a": np.ones(1)}, tmp_path, max_shard_size="lots")


@pytest.mark.parametrize(
    "size, expected",
    [(1000, 1000), ("20KB", 20_000), ("200MB", 200_000_000), ("5GB", 5 * 10**9), ("2GiB", 2 * 2**30),
     ("1.5kb", 1500), (" 7 MiB ", 7 * 2**20), ("300", 300)],
)
def test_parse_size(size, expected):
    assert parse_size(size) == expected


# ----------------------------------------------------------------------------- corrupt and missing files


def _copy_dir(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _expect_corrupt(path_arg, file_name, exc=CheckpointError):
    with pytest.raises(exc) as info:
        load_state_dict(path_arg)
    assert isinstance(info.value, ValueError)
    assert file_name in str(info.value)
    return str(info.value)


def test_truncated_safetensors(hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs["safetensors"], tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in _expect_corrupt(d, "model.safetensors")


@pytest.mark.parametrize("payload", [b"\xff" * 64, b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"])
def test_garbage_safetensors(tmp_path, payload):
    (tmp_path / "model.safetensors").write_bytes(payload)
    _expect_corrupt(tmp_path, "model.safetensors")


def test_truncated_shard(hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs["safetensors-sharded"], tmp_path / "m")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    _expect_corrupt(d, shard.name)


def test_index_names_missing_shard(hf_dirs, tmp_path):
    d = _copy_dir(hf_dirs["safetensors-sharded"], tmp_path / "m")
    victim = sorted(d.glob("model-*.safetensors"))[-1]
    victim.unlink()
    message = _expect_corrupt(d, victim.name, exc=FileNotFoundError)
    assert "model.safetensors.index.json" in message


@pytest.mark.parametrize("text", ['{"weight_map": {"a": "model-00001-of-00001.safeten', "[1, 2]", '{"metadata": {}}'])
def test_invalid_index(tmp_path, text):
    (tmp_path / "model.safetensors.index.json").write_text(text)
    assert "corrupt" in _expect_corrupt(tmp_path, "model.safetensors.index.json")


def test_index_lists_tensor_its_shard_lacks(tmp_path):
    save_state_dict({"a": np.ones(100, np.float32), "b": np.ones(100, np.float32)}, tmp_path, max_shard_size=400)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    message = _expect_corrupt(tmp_path, "model.safetensors.index.json")
    assert "ghost" in message and "model-00001-of-00002.safetensors" in message


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_corrupt_pytorch_bin(hf_dirs, tmp_path, how):
    data = (hf_dirs["pytorch"] / "pytorch_model.bin").read_bytes()
    payload = {"truncated": data[: len(data) // 2], "garbage": b"not a pickle" * 10, "empty": b""}[how]
    (tmp_path / "pytorch_model.bin").write_bytes(payload)
    assert "corrupt or truncated" in _expect_corrupt(tmp_path, "pytorch_model.bin")


def test_bin_with_non_tensor_entry(tmp_path):
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "pytorch_model.bin")
    assert "'step'" in _expect_corrupt(tmp_path, "pytorch_model.bin")


def test_bin_without_torch_names_the_extra(hf_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"bertgen-jax\[torch\]"):
        load_state_dict(hf_dirs["pytorch"])


def test_missing_weights_names_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for call in (find_weights_files, load_state_dict):
        with pytest.raises(FileNotFoundError) as info:
            call(tmp_path)
        assert str(tmp_path) in str(info.value) and "model.safetensors" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_state_dict(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- atomicity


class _Crash(Exception):
    pass


def test_crash_in_writer_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = {"w": np.arange(50, dtype=np.float32)}
    save_state_dict(old, tmp_path)
    real_write = cio._write_safetensors

    def write_then_crash(tensors, path, metadata):
        real_write(tensors, path, metadata)
        raise _Crash("disk full")

    monkeypatch.setattr(cio, "_write_safetensors", write_then_crash)
    for shard_size in (None, 100):
        with pytest.raises(_Crash):
            save_state_dict({"w": old["w"] * 2, "v": np.ones(40, np.float32)}, tmp_path, max_shard_size=shard_size)
        assert os.listdir(tmp_path) == ["model.safetensors"]  # temp files cleaned up
        _assert_same(load_state_dict(tmp_path), old)


@pytest.mark.parametrize("old_shards, new_shards", [(None, None), (None, "20KB"), ("20KB", None), ("20KB", "20KB")])
def test_crash_at_every_step_leaves_a_whole_checkpoint(model, reference, tmp_path, monkeypatch, old_shards,
                                                       new_shards):
    """Kill the save at each rename or delete, leaving its temp files behind as a real crash would:
    the directory must load, in ours and in transformers, as the old checkpoint or the new one, never a mix."""
    old = reference
    new = {k: v + 1 for k, v in reference.items()}
    real_replace, real_remove = os.replace, os.remove
    crash_at = 0
    while True:
        d = tmp_path / f"crash{crash_at}"
        save_state_dict(old, d, max_shard_size=old_shards)
        model.config.save_pretrained(d)
        steps = {"n": 0, "dead": False}

        def step():
            if steps["n"] == crash_at:
                steps["dead"] = True
                raise _Crash(f"killed at step {crash_at}")
            steps["n"] += 1

        def replace(src, dst):
            step()
            real_replace(src, dst)

        def remove(path):
            if not steps["dead"]:  # a killed process cleans nothing up
                step()
                real_remove(path)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "remove", remove)
        try:
            save_state_dict(new, d, max_shard_size=new_shards)
        except _Crash:
            pass
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
            monkeypatch.setattr(os, "remove", real_remove)

        kind, files = find_weights_files(d)
        assert not any(f.endswith(".tmp") for f in files)  # temp files are never taken for weights
        for state in (load_state_dict(d), {k: v.numpy() for k, v in _hf_state(d).items()}):
            matches = [name for name, ref in (("old", old), ("new", new))
                       if all(np.array_equal(state[k], ref[k]) for k in state)]
            assert matches, f"killed at step {crash_at}: mixed checkpoint"
            if crash_at == 0 or not steps["dead"]:
                assert matches == (["new"] if not steps["dead"] else ["old"])
        if not steps["dead"]:
            # A finished save leaves only the new checkpoint's files behind.
            assert sorted(os.listdir(d)) == sorted(["config.json"] + [os.path.basename(f) for f in files])
            break
        crash_at += 1
    assert crash_at >= 1


def test_atomic_write_text(tmp_path, monkeypatch):
    cio.atomic_write_bytes(tmp_path / "raw", b"\x00\x01")
    assert (tmp_path / "raw").read_bytes() == b"\x00\x01"
    (tmp_path / "raw").unlink()
    target = tmp_path / "config.json"
    atomic_write_text(target, '{"a": 1}')
    atomic_write_text(target, '{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(_Crash()))
    with pytest.raises(_Crash):
        atomic_write_text(target, '{"a": 3}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["config.json"]
