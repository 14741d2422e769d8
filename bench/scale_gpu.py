"""Scale bench: random-initialised Llama / Qwen / Gemma shapes, forgetless vs plain HF Trainer + PEFT.

    python bench/scale_gpu.py [--families llama,qwen,gemma] [--sizes 0.5b,1.5b,8b]
                              [--steps 5] [--warmup 2] [--batch-size 4] [--seq 1024] [--eval-items 64]
    python bench/scale_gpu.py --tiny        # the same code on CPU, tiny shapes (a test runs this)

Per (family, size): a model built from its config only (no weights needed), in bf16 on the GPU
(``--tiny``: fp32 on the CPU), trained for ``--warmup`` + ``--steps`` optimizer steps of
``--batch-size`` rows of ``--seq`` random tokens, LoRA r16 alpha 32 on every linear layer, in two
modes on the same shapes:

- ``hf``: plain ``Trainer`` + ``get_peft_model`` (``bf16=True``), cross-entropy on every token;
- ``forgetless``: the pipeline's ``build_trainer`` with its defaults that cost compute: 30% of rows
  are replay rows trained by KL to the base (a second, adapter-off forward), then one in-loop
  evaluation (general KL on ``--eval-items`` reference answers, QA generation and MC scoring on
  ``--eval-items`` items each), the evaluator forgetless runs at every checkpoint.

Printed: parameters, tokens/s over the measured steps, peak GPU memory of training (and of the
evaluation), per mode. Token ids are random, so the numbers are about cost, not quality.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# Shapes of public checkpoints of each size class (config fields only; the weights are random).
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "llama": {  # Llama 3.2 1B / 3B-ish widths scaled to the size classes, Llama 3.1 8B
        "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8, vocab_size=128256),
        "1.5b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
        "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    },
    "qwen": {  # Qwen2.5 0.5B / 1.5B / 7B
        "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936),
        "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
        "8b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
    },
    "gemma": {  # Gemma 3 270M-1B widths, 4B, 12B-ish (262k vocabulary, q/k norms, 5:1 sliding/full)
        "0.5b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144),
        "1.5b": dict(hidden_size=1536, intermediate_size=8192, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262144),
        "8b": dict(hidden_size=3072, intermediate_size=16384, num_hidden_layers=34, num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=262144),
    },
}
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=4096)


def make_config(family: str, size: str, tiny: bool) -> Any:
    """The transformers config of one shape (``tiny``: the family's architecture at toy width)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    fields = dict(SHAPES[family][size])
    if tiny:
        fields = {**TINY, **({"head_dim": 8} if family == "gemma" else {})}
    common = dict(max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=family != "llama" or size == "0.5b")
    if family == "gemma":
        n = fields["num_hidden_layers"]
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        return Gemma3TextConfig(**fields, **common, sliding_window=512, layer_types=layer_types)
    return (LlamaConfig if family == "llama" else Qwen2Config)(**fields, **common)


def random_rows(n: int, seq: int, vocab: int, seed: int) -> list[list[int]]:
    """``n`` rows of ``seq`` random token ids (ids 3.. so no special token is drawn)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seq), generator=g).tolist()


class _Clock:
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, *a: Any, **k: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def _callback(clock: _Clock) -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.on_step_end()

    return StepClock()


def _reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else float("nan")


def run_hf(cfg: Any, rows: list[list[int]], a: argparse.Namespace, device: str, out: str) -> dict[str, float]:
    """Plain Trainer + PEFT: what a user of transformers writes."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    _reset_peak(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    ds = Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=a.batch_size, max_steps=a.warmup + a.steps, learning_rate=2e-4,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=device == "cpu", disable_tqdm=True, seed=0,
        bf16=device == "cuda",
    )  # fmt: skip
    clock = _Clock()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=[_callback(clock)])
    trainer.train()
    res = _rates(clock, a, device)
    res["params"] = sum(p.numel() for p in model.parameters())
    del trainer, model
    return res


def run_forgetless(cfg: Any, rows: list[list[int]], a: argparse.Namespace, device: str, out: str) -> dict[str, float]:
    """forgetless' training path (replay rows with KL to the base), then one in-loop evaluation."""
    from transformers import AutoModelForCausalLM

    from forgetless.config import load_config
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import build_reference
    from forgetless.evaluate.runner import Evaluator
    from forgetless.testing import tiny_tokenizer
    from forgetless.train.adapters import attach_adapter
    from forgetless.train.build import build_trainer
    from forgetless.train.callbacks import EvalScheduleCallback, MetricsRecorder
    from forgetless.train.dataset import Packed, PackedDataset
    from forgetless.train.regularizers import Regularizers

    _reset_peak(device)
    run = load_config(None, [f"run_dir={out}", f"train.batch_size={a.batch_size}", "train.lr=2e-4", "train.kl_to_base=1",
                             f"train.precision={'bf16' if device == 'cuda' else 'fp32'}"])  # fmt: skip
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    n_replay = max(1, round(0.3 * len(rows)))
    packed = [Packed(r, list(r), list(range(len(r))), replay=i < n_replay) for i, r in enumerate(rows)]
    ds = PackedDataset(packed[n_replay:] + packed[:n_replay])  # the Trainer shuffles rows anyway
    # A word-level tokenizer whose ids all lie inside every shape's vocabulary: evaluation needs
    # text in and text out, not a real vocabulary.
    tok = tiny_tokenizer()
    words = "what is the capital of france paris one two three four five drug zorvanex treats marrowick syndrome".split()
    qa = [{"question": " ".join(words[i % 7 : i % 7 + 5]), "answer": words[(i + 3) % len(words)]} for i in range(a.eval_items)]
    mc = [{"question": q["question"], "choices": words[:4], "answer": i % 4} for i, q in enumerate(qa)]
    prompts = [{"id": str(i), "category": "general", "prompt": q["question"]} for i, q in enumerate(qa)]
    ref = build_reference(model, tok, prompts, max_new_tokens=a.new_tokens, topk=64, batch_size=16)
    model = attach_adapter(model, run.lora)
    evaluator = Evaluator(tok, DomainData(qa=qa, mc=mc), ref, batch_size=16, qa_max_new_tokens=a.new_tokens,
                          precision="bf16" if device == "cuda" else "fp32")  # fmt: skip
    recorder = MetricsRecorder(Path(out) / "metrics.jsonl", Path(out) / "tb", enabled=False)
    regs = Regularizers(model, kl_to_base=1.0)
    trainer = build_trainer(run, model, tok, ds, evaluator, recorder, total_steps=a.warmup + a.steps, every=10**9, device=device, regularizers=regs)
    trainer.remove_callback(EvalScheduleCallback)
    from transformers.trainer_utils import SaveStrategy

    trainer.args.save_strategy = SaveStrategy.NO
    clock = _Clock()
    trainer.add_callback(_callback(clock))
    trainer.train()
    res = _rates(clock, a, device)
    _reset_peak(device)
    t0 = time.perf_counter()
    evaluator.evaluate(model, step=a.warmup + a.steps)
    res["eval_s"] = time.perf_counter() - t0
    res["eval_peak_gb"] = _peak_gb(device)
    res["params"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    del trainer, model
    return res


def _rates(clock: _Clock, a: argparse.Namespace, device: str) -> dict[str, float]:
    assert len(clock.ends) == a.warmup + a.steps, f"expected {a.warmup + a.steps} steps, ran {len(clock.ends)}"
    wall = clock.ends[-1] - clock.ends[a.warmup - 1]
    return {"tokens_per_s": a.steps * a.batch_size * a.seq / wall, "train_peak_gb": _peak_gb(device)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="llama,qwen,gemma")
    ap.add_argument("--sizes", default="0.5b,1.5b,8b")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--eval-items", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--modes", default="hf,forgetless")
    ap.add_argument("--tiny", action="store_true", help="toy widths on the CPU: checks the script, measures nothing useful")
    a = ap.parse_args(argv)
    if a.tiny:
        a.sizes, a.steps, a.warmup, a.batch_size, a.seq, a.eval_items, a.new_tokens = "0.5b", 1, 1, 2, 32, 4, 4
    device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if device == "cpu" and not a.tiny:
        ap.error("no GPU here: this bench is for a GPU machine (--tiny checks it on the CPU)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in a.families.split(","):
            for size in a.sizes.split(","):
                cfg = make_config(family, size, a.tiny)
                n_rows = (a.warmup + a.steps) * a.batch_size * 2
                rows = random_rows(n_rows, a.seq, cfg.vocab_size, seed=0)
                for mode in a.modes.split(","):
                    fn = run_hf if mode == "hf" else run_forgetless
                    try:
                        r = fn(cfg, rows, a, device, f"{tmp}/{family}-{size}-{mode}")
                    except torch.cuda.OutOfMemoryError as e:  # a shape too large for this GPU is a result, not a crash
                        r = {"error": f"out of memory: {str(e).splitlines()[0]}"}
                    results.append({"family": family, "size": size, "mode": mode, **r})
                    gc.collect()
    print(f"\n{device}, batch {a.batch_size} x {a.seq} tokens, {a.steps} measured steps after {a.warmup} warm-up")
    print("| family | size | params | mode | tokens/s | train peak GB | eval s | eval peak GB |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['family']} | {r['size']} | - | {r['mode']} | {r['error']} | | | |")
            continue
        ev = f"{r['eval_s']:.1f} | {r['eval_peak_gb']:.2f}" if "eval_s" in r else "- | -"
        print(f"| {r['family']} | {r['size']} | {r['params'] / 1e9:.2f}B | {r['mode']} | {r['tokens_per_s']:.0f} | {r['train_peak_gb']:.2f} | {ev} |")
    return results


if __name__ == "__main__":
    main()
