"""`bertgen demo` (the README's main job) end to end on the shipped MiniLM, shortened to a few steps."""

from __future__ import annotations

import json

from bertgen_jax.cli import main


def test_demo_runs_scores_and_exports_a_model_transformers_loads(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output-dir", str(out), "--steps", "2", "--batch-size", "8", "--train-examples", "32",
            "--test-examples", "4", "--show", "2", "--max-new-tokens", "6", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "before fine-tuning" in printed and "after fine-tuning" in printed and "exact match" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["test_examples"] == 4 and len(report["samples"]) == 4
    for stage in ("before", "after"):
        assert set(report[stage]) == {"bleu", "exact_match"}
        assert 0.0 <= report[stage]["bleu"] <= 100.0
    assert report["eval_loss_after"] < report["eval_loss_before"]  # two steps at lr 2e-4 already help
    for name in ("train.jsonl", "eval.jsonl", "test.jsonl"):
        assert (out / "data" / name).is_file()
    assert (out / "train" / "loss_curve.png").is_file()

    import transformers

    exported = transformers.EncoderDecoderModel.from_pretrained(report["model_dir"])
    assert exported.config.decoder_start_token_id == 101

    # a second run replaces the demo's own directory
    assert main(argv[:1] + argv[1:3] + ["--steps", "1", "--batch-size", "8", "--train-examples", "16",
                                        "--test-examples", "2", "--show", "0", "--max-new-tokens", "2",
                                        "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["steps"] == 1


def test_demo_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not written by `bertgen demo`" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "precious.txt").read_text() == "keep me"
