"""Generation-based evaluation: generate outputs for source texts and score them against references."""

from __future__ import annotations

from typing import Optional, Sequence


def generate_texts(model, tokenizer, sources: Sequence[str], *, params=None, max_source_length: int = 128,
                   max_new_tokens: int = 64, num_beams: int = 1, batch_size: int = 16) -> list[str]:
    """Decoded outputs of `model.generate` (greedy or beam search) for `sources`, in order.

    Inputs are padded to a multiple of 8 tokens so few distinct shapes get compiled.
    """
    outputs: list[str] = []
    for start in range(0, len(sources), batch_size):
        chunk = list(sources[start:start + batch_size])
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_source_length,
                            pad_to_multiple_of=8, return_tensors="np")
        generated = model.generate(encoded["input_ids"], encoded["attention_mask"], max_new_tokens=max_new_tokens,
                                   num_beams=num_beams, params=params)
        outputs.extend(text.strip() for text in tokenizer.batch_decode(generated.sequences, skip_special_tokens=True))
    return outputs


def score_texts(predictions: Sequence[str], references: Sequence[str], *, lowercase: bool = False) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100) and exact match (%, ignoring surrounding spaces); `lowercase`
    compares case-insensitively (for uncased tokenizers, whose outputs are lower case)."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"bleu": 0.0, "exact_match": 0.0}
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)], lowercase=lowercase).score
    norm = (lambda t: t.strip().lower()) if lowercase else str.strip
    exact = sum(norm(p) == norm(r) for p, r in zip(predictions, references))
    return {"bleu": float(bleu), "exact_match": 100.0 * exact / len(predictions)}


def tokenizer_lowercases(tokenizer) -> bool:
    """Whether decoding loses case (an uncased vocabulary such as all-MiniLM-L6-v2's)."""
    sample = "The Quick Brown Fox Jumps"
    return tokenizer.encode(sample, add_special_tokens=False) == tokenizer.encode(sample.lower(),
                                                                                add_special_tokens=False)


def evaluate_generation(model, tokenizer, sources: Sequence[str], references: Sequence[str], *, params=None,
                        max_source_length: int = 128, max_new_tokens: int = 64, num_beams: int = 1,
                        batch_size: int = 16) -> tuple[dict[str, float], list[str]]:
    """(scores, predictions) for `sources` against `references`; needs `model.generate`. Scores are
    case-insensitive when the tokenizer lowercases."""
    predictions = generate_texts(model, tokenizer, sources, params=params, max_source_length=max_source_length,
                                 max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size)
    return score_texts(predictions, references, lowercase=tokenizer_lowercases(tokenizer)), predictions


def format_samples(sources: Sequence[str], predictions: Sequence[str], references: Optional[Sequence[str]] = None,
                   limit: int = 5) -> str:
    lines = []
    for i, (source, prediction) in enumerate(zip(sources, predictions)):
        if i >= limit:
            break
        lines.append(f"  source:    {source}")
        lines.append(f"  generated: {prediction}")
        if references is not None:
            lines.append(f"  reference: {references[i]}")
    return "\n".join(lines)
