"""The forgetless recipe, top to bottom: one function, built from small parts.

    curate -> load base -> tokens -> dataset -> base reference + step-0 eval
           -> train (both suites at every checkpoint) -> select inside budget -> export -> report
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed

from . import artifacts as A
from .config import RunConfig, dump_config
from .data import expand_paths, load_examples
from .errors import ForgetlessError
from .evaluate.domain import load_domain
from .evaluate.drift import cached_reference, load_general_prompts
from .evaluate.runner import Evaluator
from .io import atomic_write_json, atomic_write_text
from .models import load_model, load_tokenizer, tokenizer_fingerprint, weights_fingerprint
from .report import history_table, plot_curves, write_report
from .runinfo import data_hashes, run_info
from .train.adapters import attach_adapter, trainable_parameters
from .train.callbacks import EvalScheduleCallback, LogCallback, MetricsRecorder, RichProgressCallback
from .train.checkpoints import checkpoint_step, last_complete, remove_incomplete
from .train.dataset import PackedCollator, build_dataset
from .train.select import select_checkpoint
from .train.trainer import ForgetlessTrainer


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Create the run folder; refuse to overwrite a finished or started run unless resuming."""
    run_dir = cfg.run_dir
    if (run_dir / A.METRICS).exists() and not resume:
        raise ForgetlessError(f"{run_dir} already holds a run; pass --resume to continue it, or set run_dir to a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def plan_steps(n_rows: int, cfg: RunConfig) -> tuple[int, int]:
    """(total optimizer steps, evaluate/checkpoint every N steps)."""
    per_epoch = math.ceil(n_rows / (cfg.train.batch_size * cfg.train.grad_accum))
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(1, math.ceil(per_epoch * cfg.train.epochs))
    every = cfg.train.eval_every or max(1, math.ceil(total / 5))
    return total, every


def run_pipeline(cfg: RunConfig, *, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the whole job described by ``cfg``; returns the summary written to summary.json."""
    console = console or Console(stderr=True)
    t_start = time.time()
    set_seed(cfg.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = prepare_run_dir(cfg, resume)
    config_yaml = dump_config(cfg)
    atomic_write_text(run_dir / A.RESOLVED_CONFIG, config_yaml)
    if not cfg.data.train:
        raise ForgetlessError("data.train is empty: name at least one training file or folder")

    # 1. Data (validated up front: a bad line fails in a second, not after model loading).
    console.print("[bold]1/6 data[/]")
    train_files = expand_paths(cfg.data.train)
    examples = load_examples(train_files)
    if cfg.data.replay:
        examples += [_as_replay(e) for e in load_examples([cfg.data.replay])]
    domain = load_domain(cfg.data.eval_qa, cfg.data.eval_mc, cfg.data.eval_text)
    eval_files = [p for p in (cfg.data.eval_qa, cfg.data.eval_mc, cfg.data.eval_text, cfg.data.replay) if p]

    # 2. Base model and tokenizer.
    console.print(f"[bold]2/6 model[/] {cfg.model.name}")
    m = cfg.model
    tok = load_tokenizer(m.name, trust_remote_code=m.trust_remote_code, revision=m.revision)
    model = load_model(m.name, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    base_fp = weights_fingerprint(m.name, revision=m.revision)
    tok_fp = tokenizer_fingerprint(tok)

    # 3. Training set: chat templates, prompt masking, packing.
    dataset = build_dataset(tok, examples, max_length=cfg.data.max_length, packing=cfg.train.packing, system_prompt=cfg.data.system_prompt)
    total_steps, every = plan_steps(len(dataset), cfg)
    console.print(f"  {len(examples)} examples -> {len(dataset)} rows, {dataset.num_tokens} tokens/epoch; {total_steps} steps, evaluate every {every}")

    # 4. The base reference for general drift (cached across runs) and the evaluator.
    console.print("[bold]3/6 base reference[/] (general prompts, cached after the first run)")
    prompts = load_general_prompts(cfg.eval.general_prompts, cfg.eval.general_limit)
    ref, ref_path, cached = cached_reference(
        model, tok, prompts, base_fingerprint=base_fp, tokenizer_fingerprint=tok_fp,
        max_new_tokens=cfg.eval.general_max_new_tokens, topk=cfg.eval.kl_topk, batch_size=cfg.eval.batch_size,
        system_prompt=cfg.data.system_prompt,
    )  # fmt: skip
    console.print(f"  {len(ref.ids)} prompts, {sum(len(a) for a in ref.answer_ids)} answer tokens ({'cached' if cached else 'computed'}: {ref_path.name})")
    evaluator = Evaluator(tok, domain, ref, batch_size=cfg.eval.batch_size, qa_max_new_tokens=cfg.eval.qa_max_new_tokens, system_prompt=cfg.data.system_prompt)

    atomic_write_json(
        run_dir / A.RUN_INFO,
        run_info(config_yaml=config_yaml, base=base_fp, tokenizer=tok_fp, data=data_hashes(train_files + eval_files),
                 extra={"model": m.name, "device": device, "dataset": {"examples": len(examples), "rows": len(dataset), "tokens_per_epoch": dataset.num_tokens}}),
    )  # fmt: skip

    # 5. Adapter on the frozen base; step 0 = the base itself (a fresh LoRA is an exact no-op).
    model = attach_adapter(model, cfg.lora)
    n_train, n_total = trainable_parameters(model)
    console.print(f"[bold]4/6 train[/] {cfg.lora.mode}: {n_train:,} of {n_total:,} parameters trainable ({100 * n_train / n_total:.2f}%)")
    recorder = MetricsRecorder(run_dir / A.METRICS, run_dir / A.TENSORBOARD_DIR)
    ckpt_dir = run_dir / A.CHECKPOINTS_DIR
    resume_from = None
    if resume:
        remove_incomplete(ckpt_dir)
        last = last_complete(ckpt_dir)
        if last is not None:
            resume_from = str(last)
            recorder.truncate_after(checkpoint_step(last) or 0)
            console.print(f"  resuming from {last.name}")
        else:
            recorder.truncate_after(0)
    if not any(h["step"] == 0 for h in recorder.read()):
        with console.status("evaluating the base model (step 0)"):
            recorder.record_eval(evaluator.evaluate(model, step=0))

    trainer = build_trainer(cfg, model, tok, dataset, evaluator, recorder, total_steps=total_steps, every=every, device=device, console=console)
    t_train = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.time() - t_train
    recorder.close()

    # 6. Select inside the budget, export, report.
    console.print("[bold]5/6 select[/]")
    history = sorted(recorder.read(), key=lambda h: h["step"])
    sel = select_checkpoint(history, cfg.budget)
    export_dir = run_dir / (A.ADAPTER_DIR if cfg.lora.mode == "lora" else A.MODEL_DIR)
    if sel.step is not None:
        _export(ckpt_dir / f"checkpoint-{sel.step}", export_dir, tok, full=cfg.lora.mode == "full")
    console.print("[bold]6/6 report[/]")
    summary: dict[str, Any] = {
        "verdict": sel.verdict,
        "selected": {"step": sel.step, "metric": sel.metric, "score": sel.score, "scale": 1.0} if sel.step is not None else None,
        "base": history[0] if history else None,
        "final": history[-1] if history else None,
        "budget": cfg.budget.model_dump(),
        "timing": {"total_s": round(time.time() - t_start, 1), "train_s": round(train_s, 1),
                   "eval_s": round(sum(h.get("time/eval_general_s", 0) + h.get("time/eval_domain_s", 0) for h in history), 1)},
        "export": export_dir.name if sel.step is not None else None,
    }  # fmt: skip
    atomic_write_json(run_dir / A.SUMMARY, summary)
    plot_curves(history, run_dir / A.CURVES_PNG, budget_kl=cfg.budget.general_kl)
    write_report(run_dir / A.REPORT_MD, title=f"forgetless run: {run_dir.name}", history=history, summary=summary)
    _print_table(console, history, summary)
    return summary


def build_trainer(
    cfg: RunConfig,
    model: torch.nn.Module,
    tok: Any,
    dataset: Any,
    evaluator: Evaluator,
    recorder: MetricsRecorder,
    *,
    total_steps: int,
    every: int,
    device: str,
    console: Console | None = None,
) -> ForgetlessTrainer:
    """The HF Trainer as forgetless configures it: checkpoint + both suites every ``every`` steps."""
    m = cfg.model
    ckpt_dir = cfg.run_dir / A.CHECKPOINTS_DIR
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        warmup_steps=cfg.train.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        lr_scheduler_type=cfg.train.lr_scheduler,
        max_steps=total_steps,
        logging_steps=1,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=cfg.train.keep_checkpoints or None,
        eval_strategy="no",  # EvalScheduleCallback triggers our own evaluate() with each save
        report_to="none",  # MetricsRecorder writes TensorBoard itself, step 0 included
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=m.dtype == "bfloat16" and device == "cuda",
        dataloader_num_workers=0,
    )
    log_cb = LogCallback(recorder)
    trainer = ForgetlessTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PackedCollator(pad_id=tok.pad_token_id or 0),
        evaluator=evaluator,
        recorder=recorder,
        callbacks=[EvalScheduleCallback(every), log_cb, RichProgressCallback(console, log_cb)],
    )
    # Our Rich bar and metrics files replace the Trainer's own printing.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _as_replay(ex: Any) -> Any:
    ex.meta["replay"] = True
    return ex


def _export(checkpoint: Path, dest: Path, tok: Any, *, full: bool) -> None:
    """Copy the selected checkpoint's weights into the run's adapter/ (or model/) folder, atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wanted = ("adapter_config.json", "adapter_model.safetensors") if not full else ("config.json", "generation_config.json", "model.safetensors")
    for name in wanted:
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, tmp / name)
    if full:
        tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _print_table(console: Console, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    header, rows = history_table(history)
    table = Table(title="Both suites at every checkpoint (step 0 = base)")
    for h in header:
        table.add_column(h.replace("domain/", "d/").replace("general/", "g/"), justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"[bold]verdict:[/] {summary['verdict']}")
