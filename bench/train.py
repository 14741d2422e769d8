"""Training tokens/s on the sample domain: plain HF Trainer + PEFT vs forgetless vs full fine-tuning.

    .venv/bin/python bench/train.py [--steps 6] [--warmup 2] [--batch-size 8] [--max-length 256]
                                    [--modes hf,forgetless,full] [--threads 0] [--profile]
    .venv/bin/python bench/train.py --modes hf,hf-bf16,forgetless-fp32,forgetless-dropout,forgetless,full

Same model (embedded smollm2-135m-instruct), same data (examples/data/pharma/docs.jsonl +
train_qa.jsonl), same optimizer settings and the same number of sequences per step in every mode:

- ``hf``: what a user of transformers + PEFT typically writes: tokenize each example (chat
  template for chats), ``DataCollatorForLanguageModeling`` padding each batch to its longest
  example, LoRA r16 alpha 32 dropout 0.05 on all linear layers, plain ``Trainer``.
- ``forgetless``: forgetless' own path with its defaults: packed rows with per-example attention,
  the pipeline's ``build_trainer`` (ForgetlessTrainer), LoRA r16 alpha 32 on all linear layers,
  dropout 0, and ``train.precision: auto`` (bf16 mixed precision on an AMX CPU or a bf16 GPU).
- ``full``: the same forgetless path with ``lora.mode=full`` (every weight trained).
- ``hf-bf16``: ``hf`` with ``bf16=True`` (mixed precision, which a plain script has to ask for);
  ``forgetless-fp32``: forgetless with ``train.precision=fp32``; ``forgetless-dropout``: forgetless
  with ``lora.dropout=0.05`` (hf's setting). They separate what packing, precision and dropout
  each contribute.

Tokens/s counts *real* tokens only (padding excluded), over the ``--steps`` steps after
``--warmup`` steps, wall time from the end of the last warm-up step to the end of the last step
(data collation, forward, backward, optimizer step and logging all included). ``--profile``
prints the torch profiler's top operators for two steps of each mode.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT / "examples/data/pharma/docs.jsonl", ROOT / "examples/data/pharma/train_qa.jsonl"]


class CountingCollator:
    """Wraps a collator; remembers the real (unpadded) tokens of each batch, in the order made.

    The Trainer consumes batches in the order the collator builds them (any prefetched batch is
    simply never consumed), so entry i is the batch of optimizer step i+1 (no accumulation).
    """

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]) -> None:
        self.collate = collate
        self.tokens: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return self.collate(features)


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.ends.append(time.perf_counter())


def hf_trainer(model_name: str, batch_size: int, max_length: int, steps: int, out: str, *, bf16: bool = False) -> tuple[Any, CountingCollator]:
    """(a) The typical transformers + PEFT script."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from forgetless.data import load_examples
    from forgetless.models import load_model, load_tokenizer

    tok = load_tokenizer(model_name)
    texts = [tok.apply_chat_template(ex.messages, tokenize=False) if ex.is_chat else ex.text for ex in load_examples(DATA)]
    ds = Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"])
    model = get_peft_model(
        load_model(model_name),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    collate = CountingCollator(DataCollatorForLanguageModeling(tok, mlm=False))
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=2e-4,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, bf16=bf16,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=ds, data_collator=collate), collate


def forgetless_trainer(
    model_name: str, batch_size: int, max_length: int, steps: int, out: str, *, full: bool, extra: tuple[str, ...] = ()
) -> tuple[Any, CountingCollator]:
    """(b)/(c) forgetless' path: the pipeline's dataset, adapter and trainer, without evaluation."""
    from transformers.trainer_utils import SaveStrategy

    from forgetless.config import load_config
    from forgetless.data import load_examples
    from forgetless.models import load_model, load_tokenizer
    from forgetless.train.build import build_trainer
    from forgetless.train.adapters import attach_adapter
    from forgetless.train.callbacks import EvalScheduleCallback, MetricsRecorder
    from forgetless.train.dataset import build_dataset

    cfg = load_config(None, [
        f"run_dir={out}", f"model.name={model_name}", f"data.max_length={max_length}", f"train.batch_size={batch_size}",
        f"train.max_steps={steps}", f"lora.mode={'full' if full else 'lora'}", *extra,
    ])  # fmt: skip
    tok = load_tokenizer(model_name)
    ds = build_dataset(tok, load_examples(DATA), max_length=max_length, packing=cfg.train.packing)
    model = attach_adapter(load_model(model_name), cfg.lora)
    recorder = MetricsRecorder(Path(out) / "metrics.jsonl", Path(out) / "tb", enabled=False)
    # No evaluator: the evaluation schedule is removed below, so the Trainer never evaluates.
    trainer = build_trainer(cfg, model, tok, ds, None, recorder, total_steps=steps, every=steps + 1, device="cpu")  # type: ignore[arg-type]
    trainer.remove_callback(EvalScheduleCallback)
    trainer.args.save_strategy = SaveStrategy.NO  # no final checkpoint write inside the timing run
    collate = CountingCollator(trainer.data_collator)
    trainer.data_collator = collate
    return trainer, collate


def measure(make: Callable[[int], tuple[Any, CountingCollator]], warmup: int, steps: int) -> dict[str, float]:
    """Train warmup + steps optimizer steps; tokens/s and s/step over the last ``steps``."""
    trainer, collate = make(warmup + steps)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    assert len(clock.ends) == warmup + steps, f"expected {warmup + steps} steps, ran {len(clock.ends)}"
    wall = clock.ends[-1] - clock.ends[warmup - 1]
    tokens = sum(collate.tokens[warmup : warmup + steps])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"tokens_per_s": tokens / wall, "s_per_step": wall / steps, "tokens_per_step": tokens / steps, "trainable": trainable}


def profile(make: Callable[[int], tuple[Any, CountingCollator]], rows: int) -> str:
    """Top operators by self CPU time over two steps (after one unprofiled step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    trainer, _ = make(3)

    class Prof(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 1:
                self.p = torch_profile(activities=[ProfilerActivity.CPU])
                self.p.__enter__()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.p.__exit__(None, None, None)

    cb = Prof()
    trainer.add_callback(cb)
    trainer.train()
    return cb.p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (allocator, kernels)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per step, every mode")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--modes", default="hf,forgetless,full")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="print the torch profiler's top operators per mode")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1 (timing starts at the end of a warm-up step)")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        makers: dict[str, Callable[[int], tuple[Any, CountingCollator]]] = {
            "hf": lambda n: hf_trainer(args.model, args.batch_size, args.max_length, n, f"{tmp}/hf"),
            "hf-bf16": lambda n: hf_trainer(args.model, args.batch_size, args.max_length, n, f"{tmp}/hfb", bf16=True),
            "forgetless": lambda n: forgetless_trainer(args.model, args.batch_size, args.max_length, n, f"{tmp}/fl", full=False),
            "forgetless-fp32": lambda n: forgetless_trainer(
                args.model, args.batch_size, args.max_length, n, f"{tmp}/fl32", full=False, extra=("train.precision=fp32",)
            ),
            "forgetless-dropout": lambda n: forgetless_trainer(
                args.model, args.batch_size, args.max_length, n, f"{tmp}/fld", full=False, extra=("lora.dropout=0.05",)
            ),
            "full": lambda n: forgetless_trainer(args.model, args.batch_size, args.max_length, n, f"{tmp}/full", full=True),
        }
        unknown = set(modes) - set(makers)
        if unknown:
            ap.error(f"unknown modes {sorted(unknown)}; choose from {sorted(makers)}")
        results = {}
        for m in modes:
            if args.profile:
                print(f"--- profile: {m} ---\n{profile(makers[m], 15)}")
            results[m] = measure(makers[m], args.warmup, args.steps)
    load = os.getloadavg()
    print(f"\n{args.steps} measured steps after {args.warmup} warm-up, batch {args.batch_size}, max length {args.max_length}, "
          f"torch threads {torch.get_num_threads()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")  # fmt: skip
    w = max(12, *(len(m) + 2 for m in results))
    print(f"{'mode':<{w}}{'trainable':>12}{'tokens/step':>13}{'s/step':>9}{'tokens/s':>10}{'vs hf':>8}")
    base = results.get("hf", {}).get("tokens_per_s")
    for m, r in results.items():
        rel = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{m:<{w}}{r['trainable']:>12,}{r['tokens_per_step']:>13.0f}{r['s_per_step']:>9.2f}{r['tokens_per_s']:>10.0f}{rel:>8}")
    if "forgetless" in results and "full" in results:
        fl, full = results["forgetless"], results["full"]
        # Same tokens per step in both modes, so the tokens/s ratio is the inverse cost ratio of a step.
        ratio = fl["tokens_per_s"] / full["tokens_per_s"]
        verdict = "cheaper" if ratio > 1 else "dearer"
        print(f"LoRA (forgetless) vs full fine-tuning: {ratio:.2f}x the tokens/s, a LoRA step is {verdict} than a full step")

if __name__ == "__main__":
    main()
