"""`bertgen generate`: text in (arguments or stdin lines), one generated text per line out."""

from __future__ import annotations

import sys

from .common import add_dtype_argument, add_model_argument, jax_dtype

NAME = "generate"
HELP = "generate text from a bert2bert / roberta2roberta checkpoint"
DESCRIPTION = ("Generate text with a bert2bert / roberta2roberta checkpoint (directory or hub repo id). Inputs are "
               "the TEXT arguments, or the lines of standard input when there are none; one output line per input "
               "(num_return_sequences outputs per input, in order).")


def add_arguments(parser) -> None:
    add_model_argument(parser, required=True, help="checkpoint directory or hub repo id", local_files_only=True)
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="input texts (default: read lines from stdin)")
    parser.add_argument("--num-beams", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--min-new-tokens", type=int, default=None)
    parser.add_argument("--length-penalty", type=float, default=None)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--num-return-sequences", type=int, default=None)
    parser.add_argument("--do-sample", action="store_true", default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --do-sample)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_dtype_argument(parser)


def run(args) -> int:
    import jax

    from .. import pipeline  # the function (see bertgen_jax/__init__.py)

    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("no input text: pass TEXT arguments or lines on stdin")
    options = {name: getattr(args, name) for name in (
        "num_beams", "max_new_tokens", "max_length", "min_new_tokens", "length_penalty", "no_repeat_ngram_size",
        "repetition_penalty", "num_return_sequences", "do_sample", "temperature", "top_k", "top_p")}
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("do_sample"):
        options["prng_key"] = jax.random.PRNGKey(args.seed)
    pipe = pipeline("text2text-generation", model=args.model, dtype=jax_dtype(args.dtype), batch_size=args.batch_size,
                    local_files_only=args.local_files_only)
    results = pipe(texts, **options)
    for result in results:
        for item in (result if isinstance(result, list) else [result]):
            print(item["generated_text"].replace("\n", " "), flush=True)
    return 0
