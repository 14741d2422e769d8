"""The forgetless recipe, top to bottom: one function, built from small parts.

    data -> base model -> replay -> dataset -> base reference + step-0 eval
         -> train (both suites and the budget at every checkpoint; early stop)
         -> adapter-scale sweep -> select inside budget -> export -> report
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from transformers import set_seed

from . import artifacts as A
from .config import RunConfig, dump_config
from .data import Example, expand_paths, load_examples, record_to_example
from .errors import ForgetlessError
from .evaluate.domain import load_domain
from .evaluate.drift import cached_reference, load_general_prompts
from .evaluate.precision import resolve as resolve_precision
from .evaluate.runner import Evaluator, eval_timing, is_noop_adapter
from .io import atomic_write_json, atomic_write_text
from .promptformat import prompt_format
from .models import load_model, load_tokenizer, tokenizer_fingerprint, weights_fingerprint
from .report import history_table, plot_curves, write_report
from .runinfo import data_hashes, run_info
from .train.adapters import attach_adapter, is_peft, trainable_parameters
from .train.budget import BudgetJudge, BudgetStopCallback
from .train.calibrate import bake_scale, load_adapter_weights, sweep_scales
from .train.callbacks import MetricsRecorder, is_main_process
from .train.checkpoints import checkpoint_step, last_complete, remove_incomplete
from .train.dataset import PackedCollator, PackedDataset, build_dataset
from .train.regularizers import Regularizers, estimate_fisher
from .train.select import budget_violations, domain_score, primary_metric, select_checkpoint
from .train.build import build_trainer


def run_pipeline(cfg: RunConfig, *, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the whole job described by ``cfg``; returns the summary written to summary.json."""
    console = console or Console(stderr=True)
    if not is_main_process():
        console = Console(stderr=True, quiet=True)  # distributed launch: one log, from rank 0
    t_start = time.time()
    set_seed(cfg.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = prepare_run_dir(cfg, resume)
    config_yaml = dump_config(cfg)
    atomic_write_text(run_dir / A.RESOLVED_CONFIG, config_yaml)

    # 1. Data, validated up front: a bad line fails in a second, not after model loading.
    console.print("[bold]1/7 data[/]" + (" + curate" if cfg.curate.enabled else ""))
    if not cfg.data.train:
        raise ForgetlessError("data.train is empty: name at least one training file or folder")
    train_files = expand_paths(cfg.data.train)
    examples = load_examples(train_files)
    if cfg.curate.enabled:
        # Curate writes curated.jsonl (kept + any replay it mixed in, marked "replay": true) and
        # rejects.jsonl with a reason for every dropped record; training reads the kept file.
        from .curate.pipeline import run_curate

        cur = run_curate(train_files, run_dir / A.CURATE_DIR, cfg.curate, console=console,
                         model_name=cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)  # fmt: skip
        examples = load_examples([cur.kept_path])
        console.print(f"  curate: kept {cur.kept} records; rejects and reasons in {cur.rejects_path}")
    user_replay = load_examples([cfg.data.replay]) if cfg.data.replay else None
    domain = load_domain(cfg.data.eval_qa, cfg.data.eval_mc, cfg.data.eval_text)
    eval_files = [p for p in (cfg.data.eval_qa, cfg.data.eval_mc, cfg.data.eval_text, cfg.data.replay) if p]

    # 2. Base model and tokenizer.
    m = cfg.model
    console.print(f"[bold]2/7 model[/] {m.name}")
    tok = load_tokenizer(m.name, trust_remote_code=m.trust_remote_code, revision=m.revision)
    model = load_model(m.name, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    base_fp = weights_fingerprint(m.name, revision=m.revision)
    tok_fp = tokenizer_fingerprint(tok)

    # 3. Replay: the user's file, or the base's own answers to general prompts (cached).
    replay = user_replay
    if replay is None and cfg.train.replay_ratio > 0:
        replay = self_replay(model, tok, base_fp, console)

    # 4. The base reference for general drift (cached across runs) and the evaluator.
    console.print("[bold]3/7 base reference[/] (general prompts; cached after the first run)")
    prompts = load_general_prompts(cfg.eval.general_prompts, cfg.eval.general_limit)
    eval_precision = resolve_precision(cfg.eval.precision, device)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("base answers + log-probs", total=2 * len(prompts))
        ref, ref_path, cached = cached_reference(
            model, tok, prompts, base_fingerprint=base_fp, tokenizer_fingerprint=tok_fp,
            max_new_tokens=cfg.eval.general_max_new_tokens, topk=cfg.eval.kl_topk, batch_size=cfg.eval.batch_size,
            system_prompt=cfg.data.system_prompt, on_batch=lambda n: bar.advance(task, n), precision=eval_precision,
        )  # fmt: skip
    console.print(f"  {len(ref.ids)} prompts, {sum(len(a) for a in ref.answer_ids)} answer tokens ({'cached' if cached else 'computed'})")

    # 5. Domain tokens (after the reference: drift is measured against the true base, and the
    #    extension's own step-0 cost shows up as KL at step 0), then the training set.
    extension = extend_tokens(cfg, model, tok, examples, run_dir, console)
    dataset = build_dataset(
        tok, examples, max_length=cfg.data.max_length, packing=cfg.train.packing, system_prompt=cfg.data.system_prompt,
        replay=replay, replay_ratio=cfg.train.replay_ratio, seed=cfg.seed,
    )  # fmt: skip
    total_steps, every = plan_steps(len(dataset), cfg)
    n_replay = sum(r.replay for r in dataset.rows)
    console.print(f"  {len(examples)} examples -> {len(dataset)} rows ({n_replay} replay), {dataset.num_tokens} tokens/epoch; {total_steps} steps, evaluate every {every}")
    evaluator = Evaluator(
        tok, domain, ref, batch_size=cfg.eval.batch_size, qa_max_new_tokens=cfg.eval.qa_max_new_tokens,
        system_prompt=cfg.data.system_prompt, general_suites=tuple(cfg.eval.general_suites),
        suite_limits=cfg.eval.suite_limits, base_cache_key=f"{base_fp}:{tok_fp}", precision=eval_precision,
    )  # fmt: skip
    atomic_write_json(
        run_dir / A.RUN_INFO,
        run_info(config_yaml=config_yaml, base=base_fp, tokenizer=tok_fp, data=data_hashes(train_files + eval_files),
                 extra={"model": m.name, "prompt_format": prompt_format(tok), "device": device, "eval_precision": eval_precision, "train_precision": resolve_precision(cfg.train.precision, device), "reference": ref_path.name,
                        "tokenizer_extended": tokenizer_fingerprint(tok) if extension is not None else None,
                        "dataset": {"examples": len(examples), "rows": len(dataset), "replay_rows": n_replay, "tokens_per_epoch": dataset.num_tokens}}),
    )  # fmt: skip

    # 6. Adapter on the frozen base; step 0 = the base itself (a fresh LoRA is an exact no-op).
    token_kwargs: dict[str, Any] = {}
    if extension is not None:
        from .tokens.extend import lora_token_kwargs

        token_kwargs = lora_token_kwargs(model, extension)
    model = attach_adapter(model, cfg.lora, **token_kwargs)
    n_train, n_total = trainable_parameters(model)
    console.print(f"[bold]4/7 train[/] {cfg.lora.mode}: {n_train:,} of {n_total:,} parameters trainable ({100 * n_train / n_total:.2f}%)")
    regs = build_regularizers(cfg, model, dataset, tok)
    judge = BudgetJudge(cfg.budget)
    with console.status("scoring the base on the general suites"):
        judge.base_scores = evaluator.ensure_base_scores(model)
    recorder = MetricsRecorder(run_dir / A.METRICS, run_dir / A.TENSORBOARD_DIR)
    resume_from = find_resume_point(cfg, recorder, console) if resume else None
    if not any(h["step"] == 0 for h in recorder.read()):
        with console.status("evaluating the base model (step 0)"):
            # A fresh LoRA is an exact no-op, so step 0 is the base: scored once per base, data and
            # settings, then read from the user cache (KL is 0 by construction).
            if is_noop_adapter(model):
                base_metrics, was_cached = evaluator.evaluate_base(model)
                if was_cached:
                    console.print("  step 0 = the base model: evaluation read from the cache")
            else:
                base_metrics = evaluator.evaluate(model, step=0)
            base_metrics["budget/violations"], base_metrics["budget/inside"] = [], 1.0
            recorder.record_eval(base_metrics)
    stopper = BudgetStopCallback(cfg.train.patience)
    if resume_from is not None:
        stopper.restore(recorder.read())  # evaluations before the checkpoint still count towards patience
    trainer = build_trainer(cfg, model, tok, dataset, evaluator, recorder, total_steps=total_steps, every=every, device=device,
                            console=console, regularizers=regs, judge=judge, extra_callbacks=[stopper],
                            token_lr=cfg.tokens.lr if extension is not None else None)  # fmt: skip
    t_train = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.time() - t_train
    recorder.close()
    if not trainer.is_world_process_zero():
        return {}  # distributed launch: the other ranks only train; rank 0 calibrates, selects, exports, reports
    if stopper.stopped_at is not None:
        console.print(f"[yellow]early stop at step {stopper.stopped_at}: {cfg.train.patience} evaluations in a row outside the budget[/]")

    # 7. Adapter-scale sweep on the best checkpoint, then the best (checkpoint, scale) inside the budget.
    history = sorted(recorder.read(), key=lambda h: h["step"])
    ckpt_dir = run_dir / A.CHECKPOINTS_DIR
    scale_curve = calibrate_scale(cfg, model, evaluator, judge, history, ckpt_dir, console)
    if scale_curve:
        atomic_write_json(run_dir / A.SCALE_CURVE, scale_curve)
    console.print("[bold]6/7 select[/]")
    sel = select_checkpoint(history, cfg.budget)
    chosen_scale = 1.0
    best_scaled = best_inside(scale_curve, cfg, history)
    if best_scaled is not None and (sel.score is None or domain_score(best_scaled, sel.metric) > sel.score):
        sel.step, sel.score, chosen_scale = best_scaled["step"], domain_score(best_scaled, sel.metric), best_scaled["scale"]
        sel.verdict = f"step {sel.step} at adapter scale {chosen_scale} is the best inside the budget ({sel.metric} {sel.score:.3f})"
    export_dir = run_dir / (A.ADAPTER_DIR if cfg.lora.mode == "lora" else A.MODEL_DIR)
    if sel.step is not None:
        export(ckpt_dir / f"checkpoint-{sel.step}", export_dir, tok, full=cfg.lora.mode == "full")
        if is_peft(model):
            bake_scale(export_dir, chosen_scale)

    if extension is not None and sel.step is not None:
        from .tokens.export import export_extended

        load_adapter_weights(model, ckpt_dir / f"checkpoint-{sel.step}")
        with console.status("exporting extended base + plain adapter, and a merged model"):
            export_extended(model, tok, run_dir / A.TOKENS_DIR / A.TOKENS_EXPORT_DIR, extra_info={"step": sel.step, "scale_note": "exports use adapter scale 1.0"})

    # Router for serving: out-of-domain queries go to the base. Calibrated on the base itself.
    router_info = calibrate_serving_router(cfg, model, tok, examples, run_dir, console)

    # 8. Report.
    console.print("[bold]7/7 report[/]")
    summary = {
        "verdict": sel.verdict,
        "selected": {"step": sel.step, "scale": chosen_scale, "metric": sel.metric, "score": sel.score} if sel.step is not None else None,
        "early_stop_step": stopper.stopped_at,
        "base": history[0] if history else None,
        "final": history[-1] if history else None,
        "budget": cfg.budget.model_dump(),
        "timing": {"total_s": round(time.time() - t_start, 1), **eval_timing(history, train_s)},
        "export": export_dir.name if sel.step is not None else None,
        "router": {k: router_info[k] for k in ("method", "threshold", "calibration_auroc", "domain_to_base", "general_to_base") if k in router_info} if router_info else None,
    }  # fmt: skip
    atomic_write_json(run_dir / A.SUMMARY, summary)
    plot_curves(history, run_dir / A.CURVES_PNG, budget_kl=cfg.budget.general_kl)
    write_report(run_dir / A.REPORT_MD, title=f"forgetless run: {run_dir.name}", history=history, summary=summary, scale_curve=scale_curve)
    from .deploy.report_html import write_report as write_html_report

    write_html_report(run_dir)  # the same, offline in a browser: curves embedded, lineage, verdict
    print_table(console, history, summary)
    console.print(f"run folder: {run_dir} (report.md, report.html, curves.png, adapter/)")
    return summary


# --- the small parts -----------------------------------------------------------------------------


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Create the run folder; refuse to overwrite a started run unless resuming."""
    run_dir = cfg.run_dir
    if (run_dir / A.METRICS).exists() and not resume and is_main_process():  # rank 0 may have started writing
        raise ForgetlessError(f"{run_dir} already holds a run; pass --resume to continue it, or set run_dir to a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def plan_steps(n_rows: int, cfg: RunConfig) -> tuple[int, int]:
    """(total optimizer steps, evaluate/checkpoint every N steps)."""
    per_epoch = math.ceil(n_rows / (cfg.train.batch_size * cfg.train.grad_accum))
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(1, math.ceil(per_epoch * cfg.train.epochs))
    every = cfg.train.eval_every or max(1, math.ceil(total / 5))
    return total, every


def self_replay(model: torch.nn.Module, tok: Any, base_fp: str, console: Console) -> list[Example]:
    """The base's own answers to forgetless' replay prompts (generated once per base, cached)."""
    from .curate.replay import load_prompts, self_generated_replay

    n = len(load_prompts())
    recs = self_generated_replay(model, tok, n=n, max_new_tokens=64, cache_key=base_fp, console=console)
    return [record_to_example(r, file="<self-generated replay>", line=i + 1) for i, r in enumerate(recs)]


def build_regularizers(cfg: RunConfig, model: torch.nn.Module, dataset: PackedDataset, tok: Any) -> Regularizers:
    """The configured regularizers; EWC's Fisher is estimated here on the replay rows."""
    t = cfg.train
    replay_rows = [r for r in dataset.rows if r.replay]
    if (t.kl_to_base or t.ewc) and not replay_rows:
        if t.replay_ratio <= 0:
            raise ForgetlessError("train.kl_to_base and train.ewc need replay data: set train.replay_ratio > 0 (and optionally data.replay)")
        raise ForgetlessError("the replay data has no usable rows (every answer is empty): check data.replay or the model's replay answers")
    fisher = None
    if t.ewc:
        collate = PackedCollator(pad_id=tok.pad_token_id or 0)
        dev = next(model.parameters()).device
        batches = (
            {k: v.to(dev) for k, v in collate([PackedDataset(replay_rows)[j] for j in range(i, min(i + t.batch_size, len(replay_rows)))]).items()}
            for i in range(0, len(replay_rows), t.batch_size)
        )
        fisher = estimate_fisher(model, batches, max_batches=t.ewc_batches)
    return Regularizers(model, kl_to_base=t.kl_to_base, l2sp=t.l2sp, ewc=t.ewc, fisher=fisher)


def find_resume_point(cfg: RunConfig, recorder: MetricsRecorder, console: Console) -> str | None:
    """The newest complete checkpoint (half-written ones are deleted); metrics after it are dropped."""
    ckpt_dir = cfg.run_dir / A.CHECKPOINTS_DIR
    for p in remove_incomplete(ckpt_dir):
        console.print(f"  removed incomplete {p.name}")
    last = last_complete(ckpt_dir)
    recorder.truncate_after(checkpoint_step(last) or 0 if last else 0)
    if last is None:
        return None
    console.print(f"  resuming from {last.name}")
    return str(last)


def calibrate_scale(
    cfg: RunConfig, model: torch.nn.Module, evaluator: Evaluator, judge: BudgetJudge, history: list[dict[str, Any]], ckpt_dir: Path, console: Console
) -> list[dict[str, Any]]:
    """Sweep adapter scales on the checkpoint with the best domain score (LoRA only)."""
    trained = [h for h in history if h["step"] > 0]
    if not cfg.train.scale_sweep or not trained or not is_peft(model) or cfg.lora.use_dora:
        return []  # DoRA's magnitude vector makes output scaling non-linear in the weights: no sweep
    metric = primary_metric(history)
    best = max(trained, key=lambda h: domain_score(h, metric))
    load_adapter_weights(model, ckpt_dir / f"checkpoint-{best['step']}")
    console.print(f"[bold]5/7 adapter scale[/] sweeping {cfg.train.scale_sweep} on step {best['step']}")

    def evaluate(scale: float) -> dict[str, Any]:
        with console.status(f"evaluating scale {scale}"):
            mm = evaluator.evaluate(model, step=best["step"])
        v = judge.violations(mm, evaluator.last_scores)
        mm["budget/violations"], mm["budget/inside"] = v, float(not v)
        return mm

    curve = sweep_scales(model, [s for s in cfg.train.scale_sweep if s != 1.0], evaluate)
    return curve + [{**best, "scale": 1.0}]


def best_inside(curve: list[dict[str, Any]], cfg: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best scaled point inside the budget (None if none is)."""
    metric = primary_metric(history)
    inside = [c for c in curve if not budget_violations(c, cfg.budget)]
    return max(inside, key=lambda c: (domain_score(c, metric), -c.get("general/kl", 0.0))) if inside else None


def extend_tokens(cfg: RunConfig, model: torch.nn.Module, tok: Any, examples: list[Example], run_dir: Path, console: Console) -> Any:
    """The tokens stage: add domain terms to the tokenizer and model (None when disabled)."""
    if not cfg.tokens.enabled:
        return None
    from .tokens.analyze import example_text
    from .tokens.extend import apply_tokens_config

    ext = apply_tokens_config(model, tok, cfg.tokens, [example_text(e) for e in examples])
    atomic_write_json(run_dir / A.TOKENS_DIR / A.TOKENS_INFO, ext.to_json())
    if ext.k == 0:
        # Every term is already a single token: nothing to add, and PEFT rejects an empty index list.
        console.print(f"  tokens: all {len(ext.terms)} terms are already single tokens; nothing added")
        return None
    console.print(f"  tokens: added {ext.k} tokens for {len(ext.terms)} terms (vocabulary {ext.old_vocab} -> {ext.new_vocab}; step-0 KL bound {ext.kl_bound():.2e})")
    return ext


def calibrate_serving_router(cfg: RunConfig, model: torch.nn.Module, tok: Any, examples: list[Example], run_dir: Path, console: Console) -> dict[str, Any] | None:
    """Fit the serve stage's out-of-domain router on the base (adapter off); None if data is too small."""
    from .serve.router import calibrate_router

    domain = [m["content"] for e in examples if e.is_chat and not e.meta.get("replay") for m in (e.messages or []) if m["role"] == "user"]
    domain += [e.text for e in examples if not e.is_chat and e.text]
    # Calibrate on forgetless' general prompts; serve/data's separate set stays held out for
    # measuring the router's AUROC (tests and bench/serve_router.py).
    general = [p["prompt"] for p in load_general_prompts()]
    if len(domain) < 4:
        console.print("[yellow]router not calibrated: fewer than 4 domain texts[/]")
        return None
    ctx = model.disable_adapter() if is_peft(model) else contextlib.nullcontext()
    with console.status("calibrating the serving router on the base model"), ctx:
        info = calibrate_router(model, tok, domain, general, run_dir, batch_size=cfg.eval.batch_size)
    console.print(f"  router: {info.get('method')}, calibration AUROC {info.get('calibration_auroc', float('nan')):.3f}, threshold {info['threshold']:.3g}")
    return info


def export(checkpoint: Path, dest: Path, tok: Any, *, full: bool) -> None:
    """Copy the selected checkpoint's weights into the run's adapter/ (or model/) folder, atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wanted = ("config.json", "generation_config.json", "model.safetensors") if full else ("adapter_config.json", "adapter_model.safetensors")
    for name in wanted:
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, tmp / name)
    if full:
        tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def print_table(console: Console, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The per-checkpoint table of both suites, then the verdict."""
    header, rows = history_table(history)
    table = Table(title="Both suites at every checkpoint (step 0 = base)")
    for h in header:
        table.add_column(h.replace("domain/", "d/").replace("general/", "g/"), justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"[bold]verdict:[/] {summary['verdict']}")
