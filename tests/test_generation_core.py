"""Tests of the model-agnostic decoding core (`bertgen_jax.generation`).

Parity: a tiny random transformers `BertGenerationDecoder` (with cross-attention) is decoded by
transformers 4.56.2 `generate(use_cache=False)` and by our `generate`, whose `tokens_to_logits`
calls the *same* torch model through `jax.pure_callback` on the full prefix. The prefix lives in
`cache["self"]` (so beam re-selection must reorder it) and the encoder states in `cache["cross"]`.
Both sides run the same torch forward on the same rows, so logits are bitwise equal and the
sequences must be token-identical (compared up to and including EOS; after EOS we pad with
`pad_token_id`, where transformers' beam search pads with EOS when pad == 0).
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax import lax

import torch
from transformers import BertGenerationConfig, BertGenerationDecoder
from transformers.generation import logits_process as tlp

from bertgen_jax import generation as gen

VOCAB = 40
HIDDEN = 32
ENC_LEN = 5
PAD, EOS, BOS = 0, 1, 2
MAX_LENGTH = 16


# ----------------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------------


class TorchStepper:
    """`tokens_to_logits` backed by a torch model; hashable by identity (one compile cache key)."""

    def __init__(self, model):
        self.model = model
        self.vocab = model.config.vocab_size

    def __call__(self, params, token_ids, cache):
        index = cache["index"]
        prefix = lax.dynamic_update_slice(cache["self"]["prefix"], token_ids.astype(jnp.int32), (jnp.int32(0), index))
        logits = jax.pure_callback(
            self._host_logits,
            jax.ShapeDtypeStruct((prefix.shape[0], self.vocab), jnp.float32),
            prefix,
            index,
            cache["cross"]["enc"],
        )
        return logits, {"index": index + 1, "self": {"prefix": prefix}, "cross": cache["cross"]}

    def _host_logits(self, prefix, index, enc):
        length = int(index) + 1
        ids = torch.from_numpy(np.asarray(prefix)[:, :length].astype(np.int64))
        mask = torch.ones_like(ids)
        # Exactly what transformers' prepare_inputs_for_generation passes with use_cache=False.
        position_ids = mask.cumsum(-1) - 1
        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                encoder_hidden_states=torch.from_numpy(np.array(enc)),
                use_cache=False,
                return_dict=True,
            )
        return out.logits[:, -1, :].to(torch.float32).numpy()


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threading only adds overhead
    cfg = BertGenerationConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, is_decoder=True, add_cross_attention=True,
        initializer_range=0.5, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = BertGenerationDecoder(cfg).eval()
    with torch.no_grad():
        # Make EOS likely enough that rows and beams finish at different times.
        model.lm_head.bias[EOS] += 4.0
    rs = np.random.RandomState(0)
    prompt = rs.randint(6, VOCAB, size=(3, 3)).astype(np.int32)
    prompt[:, 0] = BOS
    enc = rs.randn(3, ENC_LEN, HIDDEN).astype(np.float32)
    yield model, TorchStepper(model), prompt, enc
    torch.set_num_threads(threads)


class _CountForwards:
    """Counts forward calls of the torch model (decoding steps), via a forward hook."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def _hook(self, *args):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


def _torch_generate(model, prompt, enc, **kwargs):
    ids = torch.from_numpy(prompt.astype(np.int64))
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=torch.from_numpy(enc),
        use_cache=False, return_dict_in_generate=True, output_scores=True, pad_token_id=PAD, **kwargs,
    )
    scores = getattr(out, "sequences_scores", None)
    return out.sequences.numpy(), (None if scores is None else scores.numpy())


def _jax_generate(stepper, prompt, enc, **kwargs):
    batch = prompt.shape[0]
    cache = {
        "index": 0,
        "self": {"prefix": np.zeros((batch, kwargs["max_length"]), np.int32)},
        "cross": {"enc": enc},
    }
    return gen.generate(stepper, None, cache, prompt, pad_token_id=PAD, **kwargs)


def _parity(model, stepper, prompt, enc, eos, **kwargs):
    """Run both sides; check sequences, scores and the number of decoding steps.

    Our loop feeds the prompt one token per step (P - 1 extra model calls before the first
    choice); transformers prefills it in one call. Beyond that the two loops must stop at the same
    step, which checks the stopping rules (EOS, max_length, early-stopping heuristic), not only
    the returned tokens.
    """
    with _CountForwards(model) as ref_count:
        ref, ref_scores = _torch_generate(model, prompt, enc, eos_token_id=list(eos), **kwargs)
    with _CountForwards(model) as our_count:
        ours = _jax_generate(stepper, prompt, enc, eos_token_id=tuple(eos), **kwargs)
    _assert_same_up_to_eos(ours.sequences, ref, prompt.shape[1], list(eos))
    if ref_scores is None:
        assert ours.sequences_scores is None
    else:
        assert ours.sequences_scores.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(ours.sequences_scores), ref_scores, rtol=1e-5, atol=1e-5)
    assert our_count.calls == ref_count.calls + prompt.shape[1] - 1
    return ref


def _assert_same_up_to_eos(ours, ref, prompt_len, eos_ids):
    ours = np.asarray(ours)
    assert ours.dtype == np.int32
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    for row_ours, row_ref in zip(ours, ref):
        hits = np.nonzero(np.isin(row_ref[prompt_len:], eos_ids))[0]
        end = prompt_len + hits[0] + 1 if hits.size else len(row_ref)
        np.testing.assert_array_equal(row_ours[:end], row_ref[:end])
        assert np.all(row_ours[end:] == PAD), row_ours


def _eos_positions(seqs, prompt_len, eos_ids):
    out = []
    for row in np.asarray(seqs):
        hits = np.nonzero(np.isin(row[prompt_len:], eos_ids))[0]
        out.append(int(hits[0]) if hits.size else -1)
    return out


# ----------------------------------------------------------------------------------------------
# Parity with transformers 4.56.2 generate
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "eos,kwargs",
    [
        ((EOS,), dict()),
        ((EOS, 5), dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=4)),
        ((EOS, 5), dict(min_length=12)),
    ],
    ids=["plain", "rep-ngram-minnew", "minlength-2eos"],
)
def test_greedy_matches_transformers(setup, eos, kwargs):
    model, stepper, prompt, enc = setup
    ref = _parity(model, stepper, prompt, enc, eos, max_length=MAX_LENGTH, **kwargs)
    positions = _eos_positions(ref, prompt.shape[1], list(eos))
    if not kwargs:
        # The batch finishes at different times (one row never emits EOS).
        assert len(set(positions)) == 3 and -1 in positions, positions
    if "min_length" in kwargs:
        assert all(p == -1 or p + prompt.shape[1] >= 12 for p in positions)


@pytest.mark.parametrize("early_stopping", [True, False, "never"], ids=["es-true", "es-false", "es-never"])
def test_beam_search_matches_transformers(setup, early_stopping):
    model, stepper, prompt, enc = setup
    distinct = set()
    for length_penalty in (0.6, 1.0, 2.0, -0.5):
        ref = _parity(
            model, stepper, prompt, enc, (EOS,), max_length=MAX_LENGTH, num_beams=4, num_return_sequences=3,
            length_penalty=length_penalty, early_stopping=early_stopping,
        )
        distinct.add(ref.tobytes())
        # Some returned hypotheses end with EOS.
        assert (ref[:, prompt.shape[1]:] == EOS).any()
    assert len(distinct) >= 3  # the length penalty changes the result


def test_beam_search_processors_and_several_eos(setup):
    model, stepper, prompt, enc = setup
    _parity(
        model, stepper, prompt, enc, (EOS, 5), max_length=MAX_LENGTH, num_beams=3, num_return_sequences=2,
        length_penalty=0.8, repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=5,
    )


def test_beam_search_eos_heavy(setup):
    """Two likely EOS ids: more than num_beams of the top candidates end, so the
    K = (1 + n_eos) * num_beams candidate pool and the -1e9 bookkeeping matter."""
    model, stepper, prompt, enc = setup
    saved = model.lm_head.bias.detach().clone()
    try:
        with torch.no_grad():
            model.lm_head.bias[EOS] += 2.0
            model.lm_head.bias[5] += 6.0
        # (True, 1.0): every slot of every item finishes -> stop although the heuristic says go on.
        # ("never", 2.0): all top 2*num_beams candidates are EOS at some step.
        for early_stopping, length_penalty in ((True, 1.0), ("never", 2.0), (False, 1.5)):
            _parity(
                model, stepper, prompt, enc, (EOS, 5), max_length=MAX_LENGTH, num_beams=3,
                num_return_sequences=3, length_penalty=length_penalty, early_stopping=early_stopping,
            )
    finally:
        with torch.no_grad():
            model.lm_head.bias.copy_(saved)


def test_beam_search_start_token_only(setup):
    """Encoder-decoder style: the prompt is just the start token (P == 1, no forced steps)."""
    model, stepper, prompt, enc = setup
    start = np.full((2, 1), BOS, np.int32)
    _parity(model, stepper, start, enc[:2], (EOS,), max_length=12, num_beams=3, min_length=4)
    _parity(model, stepper, start, enc[:2], (EOS,), max_length=12)


def test_sampling_top_k_1_is_greedy(setup):
    model, stepper, prompt, enc = setup
    ref, _ = _torch_generate(model, prompt, enc, max_length=MAX_LENGTH, eos_token_id=[EOS])
    ours = _jax_generate(
        stepper, prompt, enc, max_length=MAX_LENGTH, eos_token_id=(EOS,), do_sample=True, top_k=1,
        temperature=0.7, prng_key=jax.random.PRNGKey(3),
    )
    _assert_same_up_to_eos(ours.sequences, ref, prompt.shape[1], [EOS])


# ----------------------------------------------------------------------------------------------
# Sampling with a stub model (fixed logits per step)
# ----------------------------------------------------------------------------------------------

STUB_LOGITS = np.array([2.0, 1.5, 1.2, 1.0, 0.9, 0.5, 0.0, -0.5, -1.0, -3.0, 0.7, 1.1], np.float32)


def _stub_tokens_to_logits(params, token_ids, cache):
    # The next-token logits depend on the fed token (so multi-step samples differ per row).
    logits = params[token_ids[:, 0] % params.shape[0]]
    return logits, {"index": cache["index"] + 1, "self": {"count": cache["self"]["count"] + 1}}


def _stub_generate(batch, **kwargs):
    table = np.stack([np.roll(STUB_LOGITS, i) for i in range(len(STUB_LOGITS))])
    cache = {"index": 0, "self": {"count": np.zeros((batch,), np.int32)}}
    prompt = np.zeros((batch, 1), np.int32)
    return gen.generate(_stub_tokens_to_logits, jnp.asarray(table), cache, prompt, pad_token_id=PAD, **kwargs)


def test_sampling_is_reproducible():
    kwargs = dict(max_length=10, do_sample=True, temperature=1.3, top_k=6, top_p=0.9, eos_token_id=(EOS,))
    a = _stub_generate(8, prng_key=jax.random.PRNGKey(1), **kwargs).sequences
    b = _stub_generate(8, prng_key=jax.random.PRNGKey(1), **kwargs).sequences
    c = _stub_generate(8, prng_key=jax.random.PRNGKey(2), **kwargs).sequences
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(0.7, 6, 0.8), (1.5, 0, 0.95), (1.0, 4, 1.0)],
)
def test_sampling_distribution_matches_warped_softmax(temperature, top_k, top_p):
    """One sampled step over many rows vs softmax of transformers' warped logits.

    With n = 20000 draws the total-variation distance of the empirical distribution has a standard
    deviation well below 0.005 here; the tolerance is 0.02. Filtered tokens must never appear.
    """
    n = 20000
    out = _stub_generate(
        n, max_length=2, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_id=(), prng_key=jax.random.PRNGKey(0),
    )
    tokens = np.asarray(out.sequences)[:, 1]
    counts = np.bincount(tokens, minlength=len(STUB_LOGITS))
    scores = torch.from_numpy(STUB_LOGITS)[None]
    ids = torch.zeros((1, 1), dtype=torch.long)
    if temperature != 1.0:
        scores = tlp.TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = tlp.TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = tlp.TopPLogitsWarper(top_p)(ids, scores)
    expected = torch.softmax(scores, -1)[0].numpy()
    assert np.all(counts[expected == 0] == 0)
    tv = 0.5 * np.abs(counts / n - expected).sum()
    assert tv < 0.02, (tv, counts / n, expected)


def test_num_return_sequences_sampling_layout():
    out = _stub_generate(2, max_length=6, do_sample=True, num_return_sequences=3, eos_token_id=(EOS,))
    assert out.sequences.shape[0] == 6
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, 0], 0)


def test_top_k_sampling_keeps_ties_with_the_kth_score():
    """TopKLogitsWarper keeps every token tied with the k-th score (here 4 tokens for k=2), and so
    must our top-k filter (it compares with the k-th largest score, not the k indices)."""
    logits = np.array([2.0, 1.0, 1.0, 1.0, 0.5, -1.0, 0.2, 0.1, -0.3, 0.0, 0.4, -2.0], np.float32)
    n = 20000
    cache = {"index": 0, "self": {"count": np.zeros((n,), np.int32)}}
    out = gen.generate(_stub_tokens_to_logits, jnp.asarray(logits[None]), cache, np.zeros((n, 1), np.int32),
                       pad_token_id=PAD, max_length=2, do_sample=True, top_k=2, eos_token_id=(),
                       prng_key=jax.random.PRNGKey(3))
    counts = np.bincount(np.asarray(out.sequences)[:, 1], minlength=len(logits))
    scores = tlp.TopKLogitsWarper(2)(torch.zeros((1, 1), dtype=torch.long), torch.from_numpy(logits)[None])
    expected = torch.softmax(scores, -1)[0].numpy()
    assert np.count_nonzero(expected) == 4 and np.all(counts[expected == 0] == 0)
    assert np.all(counts[1:4] > 0)
    assert 0.5 * np.abs(counts / n - expected).sum() < 0.02


def test_beam_sample_runs_and_is_reproducible():
    kwargs = dict(max_length=8, do_sample=True, num_beams=3, num_return_sequences=2, top_k=5, eos_token_id=(EOS,))
    a = _stub_generate(2, prng_key=jax.random.PRNGKey(5), **kwargs)
    b = _stub_generate(2, prng_key=jax.random.PRNGKey(5), **kwargs)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.sequences_scores, b.sequences_scores)
    assert a.sequences.shape[0] == 4 and np.all(np.isfinite(np.asarray(a.sequences_scores)))
    # Scores are sorted best first within each batch item.
    s = np.asarray(a.sequences_scores).reshape(2, 2)
    assert np.all(s[:, 0] >= s[:, 1])


# ----------------------------------------------------------------------------------------------
# Compilation caching
# ----------------------------------------------------------------------------------------------


def test_second_call_does_not_recompile():
    def tokens_to_logits(params, token_ids, cache):  # a fresh function: a fresh cache key
        return _stub_tokens_to_logits(params, token_ids, cache)

    table = jnp.asarray(np.stack([np.roll(STUB_LOGITS, i) for i in range(len(STUB_LOGITS))]))

    def run(prompt, **kwargs):
        cache = {"index": 0, "self": {"count": np.zeros((2,), np.int32)}}
        return gen.generate(tokens_to_logits, table, cache, prompt, max_length=9, num_beams=3,
                            eos_token_id=(EOS,), pad_token_id=PAD, **kwargs)

    before = gen.compile_count()
    run(np.array([[3, 4], [5, 6]], np.int32), length_penalty=1.0, min_length=3)
    assert gen.compile_count() == before + 1
    # Different values of dynamic knobs and prompt contents: no new trace.
    run(np.array([[7, 8], [9, 3]], np.int32), length_penalty=0.6, min_length=5, num_return_sequences=2,
        repetition_penalty=1.0)
    assert gen.compile_count() == before + 1
    # A different prompt shape compiles once more.
    run(np.array([[3, 4, 5], [5, 6, 7]], np.int32))
    assert gen.compile_count() == before + 2


# ----------------------------------------------------------------------------------------------
# Pure processors vs transformers' processors
# ----------------------------------------------------------------------------------------------


def _buffer(input_ids, extra=4, fill=7):
    """Static-buffer form of `input_ids`: garbage after cur_len must be ignored."""
    n, length = input_ids.shape
    buf = np.full((n, length + extra), fill, np.int32)
    buf[:, :length] = input_ids
    return jnp.asarray(buf), length


def test_repetition_penalty_processor():
    rs = np.random.RandomState(0)
    scores = rs.randn(4, 10).astype(np.float32) * 3
    ids = rs.randint(0, 6, size=(4, 7))
    ref = tlp.RepetitionPenaltyLogitsProcessor(1.7)(torch.from_numpy(ids), torch.from_numpy(scores)).numpy()
    buf, cur_len = _buffer(ids, fill=9)
    ours = jax.jit(gen.apply_repetition_penalty)(jnp.asarray(scores), buf, cur_len, 1.7)
    np.testing.assert_array_equal(np.asarray(ours), ref)


_jit_no_repeat = jax.jit(gen.apply_no_repeat_ngram, static_argnums=3)


@pytest.mark.parametrize("ngram_size", [1, 2, 3, 4])
def test_no_repeat_ngram_processor(ngram_size):
    rs = np.random.RandomState(ngram_size)
    scores = rs.randn(6, 8).astype(np.float32)
    for length in (2, 5, 9):
        ids = rs.randint(0, 3, size=(6, length))
        ref = tlp.NoRepeatNGramLogitsProcessor(ngram_size)(torch.from_numpy(ids), torch.from_numpy(scores)).numpy()
        buf, cur_len = _buffer(ids, fill=1)
        ours = _jit_no_repeat(jnp.asarray(scores), buf, jnp.int32(cur_len), ngram_size)
        np.testing.assert_array_equal(np.asarray(ours), ref)


def test_min_length_processors():
    rs = np.random.RandomState(1)
    scores = rs.randn(3, 8).astype(np.float32)
    for length in (3, 4, 5, 6):
        ids = torch.from_numpy(rs.randint(0, 8, size=(3, length)))
        ref = tlp.MinLengthLogitsProcessor(5, [1, 4])(ids, torch.from_numpy(scores)).numpy()
        ours = jax.jit(gen.apply_min_length)(jnp.asarray(scores), length, 5, jnp.array([1, 4]))
        np.testing.assert_array_equal(np.asarray(ours), ref)
        ref = tlp.MinNewTokensLengthLogitsProcessor(2, 3, [1, 4])(ids, torch.from_numpy(scores)).numpy()
        ours = jax.jit(gen.apply_min_new_tokens)(jnp.asarray(scores), length, 2, 3, jnp.array([1, 4]))
        np.testing.assert_array_equal(np.asarray(ours), ref)


def test_sampling_warpers():
    rs = np.random.RandomState(2)
    scores = rs.randn(5, 30).astype(np.float32) * 2
    scores[0, :4] = scores[0, 4]  # ties at the top-k boundary are kept
    ids = torch.zeros((5, 1), dtype=torch.long)
    t = torch.from_numpy(scores)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(gen.apply_temperature)(jnp.asarray(scores), 0.7)),
        tlp.TemperatureLogitsWarper(0.7)(ids, t).numpy(),
    )
    for k, keep in ((1, 1), (5, 1), (3, 4), (100, 1)):
        np.testing.assert_array_equal(
            np.asarray(jax.jit(gen.apply_top_k, static_argnums=(1, 2))(jnp.asarray(scores), k, keep)),
            tlp.TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, t).numpy(),
        )
    for p, keep in ((0.9, 1), (0.5, 1), (0.05, 1), (0.3, 3), (1.0, 1)):
        np.testing.assert_array_equal(
            np.asarray(jax.jit(gen.apply_top_p, static_argnums=(1, 2))(jnp.asarray(scores), p, keep)),
            tlp.TopPLogitsWarper(p, min_tokens_to_keep=keep)(ids, t).numpy(),
        )


# ----------------------------------------------------------------------------------------------
# Option validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(num_return_sequences=2), "num_return_sequences"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, temperature=-1.0), "temperature"),
        (dict(do_sample=True, top_p=0.0), "top_p"),
        (dict(do_sample=True, top_p=1.5), "top_p"),
        (dict(do_sample=True, top_k=-1), "top_k"),
        (dict(max_length=1), "max_length"),
        (dict(max_length=2.5), "max_length"),
        (dict(num_beams=0), "num_beams"),
        (dict(early_stopping="sometimes", num_beams=2), "early_stopping"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (dict(min_length=-1), "min_length"),
        (dict(min_new_tokens=-2), "min_new_tokens"),
        (dict(eos_token_id=("a",)), "eos_token_id"),
    ],
)
def test_option_validation(kwargs, match):
    cache = {"index": 0, "self": {"count": np.zeros((2,), np.int32)}}
    kwargs = dict(dict(max_length=5), **kwargs)
    with pytest.raises(ValueError, match=match):
        gen.generate(_stub_tokens_to_logits, jnp.zeros((12, 12)), cache, np.zeros((2, 1), np.int32), **kwargs)


def test_prompt_and_cache_validation():
    cache = {"index": 0, "self": {"count": np.zeros((2,), np.int32)}}
    with pytest.raises(ValueError, match="prompt_ids"):
        gen.generate(_stub_tokens_to_logits, jnp.zeros((12, 12)), cache, np.zeros((2, 0), np.int32), max_length=5)
    with pytest.raises(ValueError, match="cache"):
        gen.generate(_stub_tokens_to_logits, jnp.zeros((12, 12)), {"self": {}}, np.zeros((2, 1), np.int32),
                     max_length=5)
    bad_cache = {"index": 0, "self": {"count": np.zeros((3,), np.int32)}}
    with pytest.raises(ValueError, match="leading batch dim"):
        gen.generate(_stub_tokens_to_logits, jnp.zeros((12, 12)), bad_cache, np.zeros((2, 1), np.int32),
                     max_length=5)


def test_greedy_choice_is_the_first_maximum_as_torch_argmax():
    """Greedy search picks tokens with two plain reductions (max, then the smallest index holding it),
    not jnp.argmax (slow on XLA CPU): same answer on ties, -inf rows, +inf and NaN as torch.argmax."""
    from bertgen_jax.generation.loop import _argmax

    rs = np.random.RandomState(3)
    scores = rs.randint(-3, 4, size=(12, 50)).astype(np.float32)  # many ties
    scores[1] = -np.inf
    scores[2, [7, 30]] = np.inf
    scores[3, [5, 9]] = np.nan
    scores[4, 0] = np.nan
    scores[5, [11, 40]] = [np.inf, np.nan]
    scores[6] = rs.randn(50).astype(np.float32)
    ours = np.asarray(jax.jit(_argmax)(jnp.asarray(scores)))
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, torch.argmax(torch.from_numpy(scores), dim=-1).numpy())
    np.testing.assert_array_equal(ours, np.asarray(jnp.argmax(jnp.asarray(scores), axis=-1)))
