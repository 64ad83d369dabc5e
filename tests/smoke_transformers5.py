"""Smoke test beside the newest transformers (run by .ci/run in a fresh venv, not collected by pytest).

A tiny bert2bert saved by *that* transformers loads here, generates what it generates, is saved
again and loads back into transformers with no missing or unexpected keys and the same logits. The
hub path (a repo id from a local huggingface_hub cache) and a tokenizer it saved go through here too.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import torch
import transformers

import bertgen_jax
from bertgen_jax import AutoTokenizer, EncoderDecoderModel

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40, pad_token_id=0, bos_token_id=2, eos_token_id=1)
TOL = 1e-5


def tiny_bert2bert() -> transformers.EncoderDecoderModel:
    enc = transformers.BertGenerationConfig(**TINY)
    dec = transformers.BertGenerationConfig(**TINY, is_decoder=True, add_cross_attention=True)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec, decoder_start_token_id=2,
                                                                            pad_token_id=0)
    model = transformers.EncoderDecoderModel(config=config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # wide random weights, so a swapped or dropped tensor shows in the logits
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            param.copy_(noise + 1.0 if name.endswith("LayerNorm.weight") else noise)
    return model.eval()


def tiny_family_pair(model_type: str) -> transformers.EncoderDecoderModel:
    """BertModel + BertLMHeadModel or RobertaModel + RobertaForCausalLM, as transformers' docs build them."""
    config_class = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[model_type]
    values = dict(TINY, pad_token_id=1 if model_type == "roberta" else 0, type_vocab_size=2)
    enc = config_class(**values)
    dec = config_class(**values, is_decoder=True, add_cross_attention=True)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec, decoder_start_token_id=2,
                                                                            pad_token_id=values["pad_token_id"])
    model = transformers.EncoderDecoderModel(config=config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            param.copy_(noise + 1.0 if name.endswith(("LayerNorm.weight", "layer_norm.weight")) else noise)
    return model.eval()


def torch_logits(model, ids, mask, decoder_ids) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(decoder_ids)).logits.numpy()


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"smoke FAILED: {what}")
    print(f"ok: {what}")


def main() -> None:
    import argparse

    import huggingface_hub
    import tokenizers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-transformers", type=int, default=0, help="fail below this major version")
    args = parser.parse_args()
    major = int(transformers.__version__.split(".")[0])
    check(major >= args.min_transformers, f"transformers {transformers.__version__} >= {args.min_transformers}")
    print(f"transformers {transformers.__version__}, huggingface_hub {huggingface_hub.__version__}, "
          f"tokenizers {tokenizers.__version__}, torch {torch.__version__}, bertgen_jax from "
          f"{os.path.dirname(bertgen_jax.__file__)}")
    root = tempfile.mkdtemp(prefix="bertgen-smoke-")
    try:
        hf_dir, ours_dir = os.path.join(root, "hf"), os.path.join(root, "ours")
        reference = tiny_bert2bert()
        reference.save_pretrained(hf_dir)

        rng = np.random.RandomState(1)
        ids = rng.randint(3, 99, size=(2, 7)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 5:] = 0
        decoder_ids = rng.randint(3, 99, size=(2, 4)).astype(np.int64)
        expected = torch_logits(reference, ids, mask, decoder_ids)

        model = EncoderDecoderModel.from_pretrained(hf_dir)
        check(not model.conversion_report.initialized, "every weight came from the checkpoint")
        ours = np.asarray(model(ids, mask, decoder_input_ids=decoder_ids).logits)
        diff = float(np.max(np.abs(ours - expected)))
        check(diff <= TOL, f"logits here equal transformers' (max diff {diff:.2e})")

        generated = np.asarray(model.generate(ids, mask, max_new_tokens=6, no_repeat_ngram_size=0).sequences)
        with torch.no_grad():
            hf_generated = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=6,
                                              do_sample=False, num_beams=1).numpy()
        check(generated.shape == hf_generated.shape and np.array_equal(generated, hf_generated),
              f"greedy generate equals transformers' {generated.tolist()}")

        model.save_pretrained(ours_dir)
        back, info = transformers.EncoderDecoderModel.from_pretrained(ours_dir, output_loading_info=True)
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            check(not info.get(kind), f"transformers reload: no {kind} {sorted(info.get(kind) or [])}")
        again = torch_logits(back.eval(), ids, mask, decoder_ids)
        diff = float(np.max(np.abs(again - expected)))
        check(diff <= TOL, f"reloaded in transformers, same logits (max diff {diff:.2e})")

        # transformers' own bert2bert / roberta2roberta layouts, both ways.
        for model_type in ("bert", "roberta"):
            reference = tiny_family_pair(model_type)
            family_dir, family_ours = os.path.join(root, model_type), os.path.join(root, model_type + "-ours")
            reference.save_pretrained(family_dir)
            family_expected = torch_logits(reference, ids, mask, decoder_ids)
            family = EncoderDecoderModel.from_pretrained(family_dir)
            diff = float(np.max(np.abs(np.asarray(family(ids, mask, decoder_input_ids=decoder_ids).logits)
                                       - family_expected)))
            check(diff <= TOL, f"{model_type}2{model_type} logits equal transformers' (max diff {diff:.2e})")
            family.save_pretrained(family_ours)
            back, info = transformers.EncoderDecoderModel.from_pretrained(family_ours, output_loading_info=True)
            check(not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")),
                  f"{model_type}2{model_type} reloads in transformers with no missing/unexpected keys {info}")
            diff = float(np.max(np.abs(torch_logits(back.eval(), ids, mask, decoder_ids) - family_expected)))
            check(diff <= TOL, f"{model_type}2{model_type} reloaded in transformers, same logits (max diff {diff:.2e})")

        # A repo id through huggingface_hub's cache layout, offline.
        cache = os.path.join(root, "hub")
        snapshot = os.path.join(cache, "models--acme--tiny", "snapshots", "0" * 40)
        shutil.copytree(hf_dir, snapshot)
        os.makedirs(os.path.join(cache, "models--acme--tiny", "refs"))
        with open(os.path.join(cache, "models--acme--tiny", "refs", "main"), "w") as handle:
            handle.write("0" * 40)
        from_hub = EncoderDecoderModel.from_pretrained("acme/tiny", cache_dir=cache, local_files_only=True)
        check(np.array_equal(np.asarray(from_hub(ids, mask, decoder_input_ids=decoder_ids).logits), ours),
              "repo id resolved from the hub cache (local_files_only)")
        try:
            EncoderDecoderModel.from_pretrained("acme/absent", cache_dir=cache, local_files_only=True)
        except FileNotFoundError as err:
            check("acme/absent" in str(err), "an uncached repo id offline is a FileNotFoundError naming it")
        else:
            check(False, "an uncached repo id offline must fail")

        # A WordPiece tokenizer saved by this transformers.
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "jump", "##s",
                 "over", "lazy", "dog", ".", ",", "a", "##n", "is"]
        vocab_file = os.path.join(root, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as handle:
            handle.write("\n".join(vocab) + "\n")
        tok_dir = os.path.join(root, "tok")
        transformers.BertTokenizerFast(vocab_file).save_pretrained(tok_dir)  # 4.x: vocab_file, 5: vocab
        hf_tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
        our_tok = AutoTokenizer.from_pretrained(tok_dir)
        texts = ["The quick brown fox jumps over the lazy dog.", "a fox, an ox"]
        hf_ids = hf_tok(texts, padding=True)["input_ids"]
        our_ids = our_tok(texts, padding=True)["input_ids"]
        check(1 not in hf_ids[0], "transformers read the vocabulary (no [UNK] in the first text)")
        check([list(map(int, row)) for row in our_ids] == [list(row) for row in hf_ids],
              f"tokenizer saved by transformers gives the same ids {hf_ids}")
        check(our_tok.decode(our_ids[0], skip_special_tokens=True)
              == hf_tok.decode(hf_ids[0], skip_special_tokens=True), "decode equals transformers'")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("smoke passed")


if __name__ == "__main__":
    main()
