"""The transformers side of the benchmarks, run in its own process by file path (`python torch_side.py TASK ...`),
usually with another interpreter (`--torch-python`: an environment with the newest transformers).

Imports only torch, transformers, numpy and `common.py` beside it, never bertgen_jax (that interpreter may not
have JAX). Works with transformers 4.56 (the parity reference) and 5.x. Every task prints one JSON object last,
with the versions it ran; a setup problem (no GPU for --device gpu) is one `error: ...` line and exit status 2.

Tasks: build (a bert2bert, saved), generate (build + save, time `generate`), train-step (time forward + backward + AdamW),
finetune (`Seq2SeqTrainer` on a JSONL pair file, the model saved at the end), eval-loss (the shared held-out
loss of several fine-tuned models), serve (batched generation over a list of texts).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (BenchError, DEVICES, DTYPES, GENERATION_SCENARIOS, LEARNING_RATE, NEW_TOKENS,  # noqa: E402
                    SIZES, STEP_WARMUP, generation_inputs, median_time, peak_rss_mib, train_step_batch)

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- setup
def setup(device: str, dtype: str):
    """(torch device, torch dtype, versions dict); no CUDA for --device gpu is a BenchError."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    torch.set_num_threads(os.cpu_count())
    if device == "gpu" and not torch.cuda.is_available():
        raise BenchError(f"--device gpu: torch {torch.__version__} finds no CUDA device "
                         "(needs an NVIDIA GPU and a CUDA build of torch)")
    target = torch.device("cuda" if device == "gpu" else "cpu")
    info = dict(transformers=transformers.__version__, torch=torch.__version__, threads=torch.get_num_threads(),
                device=torch.cuda.get_device_name(0) if device == "gpu" else "cpu", dtype=dtype)
    return target, {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype], info


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_bert2bert(size: str, minilm_dir: str):
    """A bert2bert of BertGeneration encoder + decoder: MiniLM's real weights warm-started, or random."""
    import torch
    import transformers

    torch.manual_seed(0)
    if size == "minilm":
        encoder = transformers.BertGenerationEncoder.from_pretrained(minilm_dir, bos_token_id=101, eos_token_id=102)
        decoder = transformers.BertGenerationDecoder.from_pretrained(minilm_dir, add_cross_attention=True,
                                                                     is_decoder=True, bos_token_id=101,
                                                                     eos_token_id=102)
    else:
        layers, hidden, heads, inter, vocab = SIZES[size]
        kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=inter, bos_token_id=101, eos_token_id=102)
        encoder = transformers.BertGenerationEncoder(transformers.BertGenerationConfig(**kw))
        decoder = transformers.BertGenerationDecoder(transformers.BertGenerationConfig(
            **kw, is_decoder=True, add_cross_attention=True))
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    model.config.decoder_start_token_id = 101
    model.config.pad_token_id = 0
    return model


def warm_start(architecture: str, minilm_dir: str, tokenizer):
    """The demo's warm start: BertModel + BertLMHeadModel ('bert', transformers' own pick for a BERT
    checkpoint) or the BertGeneration pair ('bert-generation'); ids as `bertgen train` sets them."""
    import transformers

    start, end, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if architecture == "bert-generation":
        encoder = transformers.BertGenerationEncoder.from_pretrained(minilm_dir, bos_token_id=start,
                                                                     eos_token_id=end, pad_token_id=pad)
        decoder = transformers.BertGenerationDecoder.from_pretrained(minilm_dir, add_cross_attention=True,
                                                                     is_decoder=True, bos_token_id=start,
                                                                     eos_token_id=end, pad_token_id=pad)
        model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    else:
        model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir)
    model.config.decoder_start_token_id = start
    model.config.pad_token_id = pad
    model.config.eos_token_id = end
    return model


def encode_pairs(tokenizer, pairs, max_length: int = 128) -> list[dict]:
    """`bertgen train`'s rule (training.data.tokenize_examples): source ids with [CLS]/[SEP], truncated to
    max_length; labels = the target's ids without the leading [CLS], at most max_length."""
    start = tokenizer.cls_token_id
    sources = tokenizer([p["source"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    targets = tokenizer([p["target"] for p in pairs], truncation=True, max_length=max_length + 1)["input_ids"]
    rows = []
    for source, target in zip(sources, targets):
        if target and target[0] == start:
            target = target[1:]
        rows.append({"input_ids": list(source), "attention_mask": [1] * len(source), "labels": list(target[:max_length])})
    return rows


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------- generate
def task_build(args, device, dtype, info) -> dict:
    """Only build the bert2bert and save it (float32), for the other benchmarks to load."""
    build_bert2bert(args.size, args.minilm_dir).save_pretrained(args.save_to)
    return {}


def task_generate(args, device, dtype, info) -> dict:
    import torch


    model = build_bert2bert(args.size, args.minilm_dir)
    model.save_pretrained(args.save_to)
    model = model.to(device=device, dtype=dtype)
    decoder_bytes = sum(p.numel() * p.element_size() for p in model.decoder.parameters())  # in --dtype
    seconds = {}
    for name, scenario, ids in generation_inputs(model.config.encoder.vocab_size):
        kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **scenario)
        ids = torch.tensor(ids, device=device)

        def run():
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            synchronize(device)
            assert out.shape[1] == NEW_TOKENS + 1

        for _ in range(3):  # warm-up: torch's first calls are up to 10x slower than steady state
            run()
        seconds[name] = median_time(run, args.repeats)
    assert [name for name, _ in GENERATION_SCENARIOS] == list(seconds)
    return dict(seconds=seconds, decoder_bytes=decoder_bytes)


# ----------------------------------------------------------------------------- train step
def task_train_step(args, device, dtype, info) -> dict:
    import contextlib

    import torch
    import transformers


    torch.manual_seed(0)
    model = transformers.EncoderDecoderModel.from_pretrained(args.model_dir).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    ids, mask, labels = (torch.tensor(a, device=device) for a in train_step_batch(model.config.encoder.vocab_size))
    # bfloat16: autocast with float32 master weights, as Trainer(bf16=True) does
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16
                else contextlib.nullcontext())

    def step():
        optimizer.zero_grad()
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    times, loss = [], None
    for _ in range(STEP_WARMUP + args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return dict(first_s=times[0], step_s=statistics.median(times[STEP_WARMUP:]), loss=loss)


# ----------------------------------------------------------------------------- fine-tuning
def trainer_arguments(args, device) -> dict:
    """Seq2SeqTrainingArguments for this run, spelled for the installed transformers (4.56: group_by_length,
    5.x: train_sampling_strategy)."""
    import transformers

    accepted = inspect.signature(transformers.Seq2SeqTrainingArguments.__init__).parameters
    settings = dict(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        lr_scheduler_type="linear", max_grad_norm=1.0, eval_strategy="no", save_strategy="no",
        logging_steps=args.log_every, report_to="none", disable_tqdm=True, seed=args.seed,
        dataloader_num_workers=0, use_cpu=device.type == "cpu", bf16=args.dtype == "bfloat16",
    )
    if args.sampler == "group_by_length":
        if "train_sampling_strategy" in accepted:
            settings["train_sampling_strategy"] = "group_by_length"
        else:
            settings["group_by_length"] = True
    if "eval_strategy" not in accepted:  # transformers < 4.41
        settings["evaluation_strategy"] = settings.pop("eval_strategy")
    return settings


def task_finetune(args, device, dtype, info) -> dict:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.minilm_dir)
    model = warm_start(args.architecture, args.minilm_dir, tokenizer)
    train = encode_pairs(tokenizer, read_jsonl(args.train_file))
    collate = transformers.DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX)
    seen = {"label_tokens": 0, "padded_label_tokens": 0}

    def counting_collator(features):
        batch = collate(features)
        seen["label_tokens"] += int((batch["labels"] != IGNORE_INDEX).sum())
        seen["padded_label_tokens"] += int(batch["labels"].numel())
        return batch

    settings = trainer_arguments(args, device)
    training_args = transformers.Seq2SeqTrainingArguments(**settings)
    accepted = inspect.signature(transformers.Seq2SeqTrainer.__init__).parameters
    tokenizer_kw = {"processing_class" if "processing_class" in accepted else "tokenizer": tokenizer}
    trainer = transformers.Seq2SeqTrainer(model=model, args=training_args, train_dataset=train,
                                          data_collator=counting_collator, **tokenizer_kw)
    started = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - started
    trainer.save_model(os.path.join(args.output_dir, "model"))
    del settings["output_dir"]
    return dict(train_s=train_s, train_loss=output.training_loss, steps=output.global_step,
                settings=settings, **seen, torch_dtype=str(dtype))


def mean_label_loss(model, rows, device, batch_size: int, start_id: int, pad_id: int) -> tuple[float, int]:
    """Mean token cross-entropy over all label tokens of `rows` (float64 sum / count), teacher forced:
    decoder inputs = [start] + labels[:-1], no decoder padding mask (causal; padding only at the end)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(rows), batch_size):
            chunk = rows[begin:begin + batch_size]
            src_len = max(len(r["input_ids"]) for r in chunk)
            tgt_len = max(len(r["labels"]) for r in chunk)
            ids = np.full((len(chunk), src_len), pad_id, np.int64)
            mask = np.zeros_like(ids)
            labels = np.full((len(chunk), tgt_len), IGNORE_INDEX, np.int64)
            for i, r in enumerate(chunk):
                ids[i, :len(r["input_ids"])] = r["input_ids"]
                mask[i, :len(r["input_ids"])] = 1
                labels[i, :len(r["labels"])] = r["labels"]
            decoder_ids = np.concatenate([np.full((len(chunk), 1), start_id), labels[:, :-1]], axis=1)
            decoder_ids[decoder_ids == IGNORE_INDEX] = pad_id
            as_tensor = lambda a: torch.tensor(a, device=device)  # noqa: E731
            logits = model(input_ids=as_tensor(ids), attention_mask=as_tensor(mask),
                           decoder_input_ids=as_tensor(decoder_ids)).logits.float()
            losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       as_tensor(labels).reshape(-1), ignore_index=IGNORE_INDEX,
                                                       reduction="sum")
            total += float(losses.double())
            count += int((labels != IGNORE_INDEX).sum())
    return total / count, count


def task_eval_loss(args, device, dtype, info) -> dict:
    """The one held-out loss function for every fine-tuned model (float32, the same pairs and batches)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.minilm_dir)
    rows = encode_pairs(tokenizer, read_jsonl(args.eval_file))
    losses = {}
    for name, directory in zip(args.names, args.models):
        model = transformers.EncoderDecoderModel.from_pretrained(directory).to(device).eval()
        losses[name], tokens = mean_label_loss(model, rows, device, 32, tokenizer.cls_token_id,
                                               tokenizer.pad_token_id)
        del model
    return dict(losses=losses, pairs=len(rows), label_tokens=tokens)


# ----------------------------------------------------------------------------- serving
def task_serve(args, device, dtype, info) -> dict:
    """transformers' batched generation (batch_size 8) over the texts: its text2text pipeline where that
    exists (4.x), else the same loop by hand (5.x dropped the task): tokenize 8, pad, generate, decode."""
    import transformers

    with open(args.texts, encoding="utf-8") as handle:
        texts = json.load(handle)
    parameters = json.loads(args.parameters)
    model = transformers.EncoderDecoderModel.from_pretrained(args.model_dir).to(device=device, dtype=dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    tasks = getattr(getattr(transformers, "pipelines", None), "SUPPORTED_TASKS", {})
    if "text2text-generation" in tasks:
        pipe = transformers.pipeline("text2text-generation", model=model, tokenizer=tokenizer, batch_size=8,
                                     device=device)
        how = "transformers pipeline, batch_size=8"

        def run(chunk):
            return [r["generated_text"] for r in pipe(chunk, **parameters)]
    else:
        how = "transformers generate, batches of 8"

        def run(chunk):
            answers = []
            for begin in range(0, len(chunk), 8):
                inputs = tokenizer(chunk[begin:begin + 8], padding=True, return_tensors="pt").to(device)
                out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     **parameters)
                answers += tokenizer.batch_decode(out, skip_special_tokens=True)
            return answers

    import torch

    with torch.no_grad():
        run(texts[:8])
        synchronize(device)
        started = time.perf_counter()
        answers = run(texts)
        synchronize(device)
        seconds = time.perf_counter() - started
    return dict(seconds=seconds, answers=answers, how=how)


TASKS = {"build": task_build, "generate": task_generate, "train-step": task_train_step, "finetune": task_finetune,
         "eval-loss": task_eval_loss, "serve": task_serve}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=tuple(TASKS))
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--minilm-dir")
    parser.add_argument("--size", default="minilm")
    parser.add_argument("--save-to")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--architecture", choices=("bert", "bert-generation"), default="bert")
    parser.add_argument("--train-file")
    parser.add_argument("--eval-file")
    parser.add_argument("--output-dir")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=("group_by_length", "random"), default="group_by_length")
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--names", nargs="*", default=[])
    parser.add_argument("--texts")
    parser.add_argument("--parameters", default="{}")
    args = parser.parse_args(argv)
    try:
        device, dtype, info = setup(args.device, args.dtype)
        result = TASKS[args.task](args, device, dtype, info)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    result.update(info, peak_rss_mib=peak_rss_mib())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
