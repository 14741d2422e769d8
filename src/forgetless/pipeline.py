"""The forgetless recipe, top to bottom: one function of named steps, numbered once.

    1 data -> 2 model -> 3 base reference -> 4 train -> 5 select -> 6 export -> 7 report

Each step is a small function below :func:`run_pipeline`; the budget steers step 4 (verdict and
early stop at every checkpoint) and step 5 (the best checkpoint and adapter scale it allows).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from transformers import set_seed

from . import artifacts as A
from .adapter import adapter_off, is_peft
from .config import RunConfig, dump_config
from .curate.augment import augment_documents
from .data import Example, expand_paths, load_examples, record_to_example
from .errors import ForgetlessError
from .evaluate.domain import DomainData, load_domain
from .evaluate.drift import GeneralReference, cached_reference, load_general_prompts
from .evaluate.precision import resolve as resolve_precision
from .evaluate.runner import Evaluator, eval_timing
from .evaluate.served import served_report
from .evaluate.subset import subset_domain
from .integrations.callback import ForgetlessCallback
from .io import atomic_write_json, atomic_write_text
from .models import load_model, load_tokenizer, tokenizer_fingerprint, weights_fingerprint
from .promptformat import prompt_format
from .report import plot_curves, print_table, write_report
from .runinfo import data_hashes, run_info
from .train.adapters import attach_adapter, trainable_parameters
from .train.budget import BudgetJudge, Selection, select
from .train.build import build_trainer
from .train.calibrate import bake_scale, calibrate_scale, load_adapter_weights
from .train.callbacks import MetricsRecorder, is_main_process
from .train.checkpoints import copy_checkpoint, find_resume_point
from .train.dataset import PackedDataset, build_dataset
from .train.final_eval import evaluate_selection, heldout_base_reference, report_sections
from .train.regularizers import build_regularizers

STEPS = ("data", "model", "base reference", "train", "select", "export", "report")


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
    step = _Steps(console)

    step("data", " + curate" if cfg.curate.enabled else "")
    data = load_data(cfg, run_dir, console)
    step("model", cfg.model.name)
    base = load_base(cfg)
    step("base reference", "(general prompts; cached after the first run)")
    replay = data.replay if data.replay is not None or cfg.train.replay_ratio <= 0 else self_replay(base, console)
    ref = base_reference(cfg, base, console)
    heldout = heldout_base_reference(cfg, base.model, base.tok, base_fingerprint=base.fingerprint, tokenizer_fingerprint=base.tok_fingerprint, device=base.device, console=console)
    extension = extend_tokens(cfg, base.model, base.tok, data.examples, run_dir, console)
    dataset = build_dataset(
        base.tok, data.examples, max_length=cfg.data.max_length, packing=cfg.train.packing, system_prompt=cfg.data.system_prompt,
        replay=replay, replay_ratio=cfg.train.replay_ratio, replay_rotate=cfg.train.replay_rotate, seed=cfg.seed,
    )  # fmt: skip
    total_steps, every = plan_steps(dataset.epoch_rows, cfg)
    pool = f" of a pool of {dataset.replay_pool_rows}, rotating" if dataset.replay_per_epoch is not None else ""
    console.print(f"  {len(data.examples)} examples -> {dataset.epoch_rows} rows an epoch ({dataset.replay_rows} replay{pool}), {dataset.num_tokens} tokens/epoch; {total_steps} steps, evaluate every {every}")
    evaluator = make_evaluator(cfg, base, data.domain, ref)
    write_run_info(cfg, run_dir, base, data, ref, extension, dataset)

    step("train")
    model = attach(cfg, base.model, extension, console)
    trained = train(cfg, model, base.tok, dataset, evaluator, total_steps, every, base.device, extension, resume, console)
    if not trained.main_process:
        return {}  # distributed launch: the other ranks only train; rank 0 calibrates, selects, exports, reports

    step("select")
    scale_curve = calibrate_scale(cfg, model, evaluator, trained.judge, trained.history, console)
    if scale_curve:
        atomic_write_json(run_dir / A.SCALE_CURVE, scale_curve)
    sel = select(trained.history, cfg.budget, scale_curve)

    step("export")
    export_dir = export_selection(cfg, model, base.tok, sel, extension, console)
    selected_eval = evaluate_selection(cfg, model, evaluator, data.domain, sel, heldout, console)
    router_info = calibrate_serving_router(cfg, model, base.tok, data.examples, run_dir, console)

    step("report")
    summary = make_summary(cfg, sel, trained, export_dir, router_info, time.time() - t_start, selected_eval)
    write_reports(cfg, run_dir, trained.history, summary, scale_curve, report_sections(selected_eval, trained.history))
    # The served system is loaded afresh from the exported adapter and its base: the training copy
    # (and the trainer's cycles that still hold it) go first, so the two never sit in memory together.
    del model, base, evaluator, dataset, replay, ref, heldout, extension
    gc.collect()
    served_report(cfg, run_dir, console)  # eval.served_report: router + adapter + base scored as served
    print_table(console, trained.history, summary)
    console.print(f"run folder: {run_dir} (report.md, report.html, curves.png, adapter/)")
    return summary


# --- the steps -----------------------------------------------------------------------------------


class _Steps:
    """Prints each step's heading with its number from :data:`STEPS` (the one numbering)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, name: str, detail: str = "") -> None:
        n = STEPS.index(name) + 1
        self.console.print(f"[bold]{n}/{len(STEPS)} {name}[/]" + (f" {detail}" if detail else ""))


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Create the run folder and save the resolved config; refuse to overwrite a started run unless resuming."""
    run_dir = cfg.run_dir
    if (run_dir / A.METRICS).exists() and not resume and is_main_process():  # rank 0 may have started writing
        raise ForgetlessError(f"{run_dir} already holds a run; pass --resume to continue it, or set run_dir to a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / A.RESOLVED_CONFIG, dump_config(cfg))
    return run_dir


@dataclass
class Data:
    """The training examples (curated when enabled), the user's replay, and the domain suites."""

    examples: list[Example]
    replay: list[Example] | None
    domain: DomainData
    files: list[Path]  # every input file, hashed into run_info.json


def load_data(cfg: RunConfig, run_dir: Path, console: Console) -> Data:
    """Read and validate every input up front: a bad line fails in a second, not after model loading."""
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
    if cfg.data.doc_pairs:
        examples, added = augment_documents(examples)
        console.print(f"  doc_pairs: + {added} opening + sentence pairs from the documents")
    replay = load_examples([cfg.data.replay]) if cfg.data.replay else None
    domain = load_domain(cfg.data.eval_qa, cfg.data.eval_mc, cfg.data.eval_text)
    eval_files = [p for p in (cfg.data.eval_qa, cfg.data.eval_mc, cfg.data.eval_text, cfg.data.replay) if p]
    return Data(examples, replay, domain, train_files + eval_files)


@dataclass
class Base:
    """The base model on its device, its tokenizer, and their content fingerprints."""

    model: torch.nn.Module
    tok: Any
    device: str
    fingerprint: str
    tok_fingerprint: str


def load_base(cfg: RunConfig) -> Base:
    """Load the base model and tokenizer (revision and remote-code setting from ``model``)."""
    m = cfg.model
    tok = load_tokenizer(m.name, trust_remote_code=m.trust_remote_code, revision=m.revision)
    model = load_model(m.name, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    return Base(model, tok, device, weights_fingerprint(m.name, revision=m.revision), tokenizer_fingerprint(tok))


def base_reference(cfg: RunConfig, base: Base, console: Console) -> tuple[GeneralReference, Path]:
    """The base's answers and top-k log-probs on the general prompts, that drift is measured against (cached)."""
    prompts = load_general_prompts(cfg.eval.general_prompts, cfg.eval.general_limit)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("base answers + log-probs", total=2 * len(prompts))
        ref, path, cached = cached_reference(
            base.model, base.tok, prompts, base_fingerprint=base.fingerprint, tokenizer_fingerprint=base.tok_fingerprint,
            max_new_tokens=cfg.eval.general_max_new_tokens, topk=cfg.eval.kl_topk, batch_size=cfg.eval.batch_size,
            system_prompt=cfg.data.system_prompt, on_batch=lambda n: bar.advance(task, n),
            precision=resolve_precision(cfg.eval.precision, base.device),
        )  # fmt: skip
    console.print(f"  {len(ref.ids)} prompts, {sum(len(a) for a in ref.answer_ids)} answer tokens ({'cached' if cached else 'computed'})")
    return ref, path


def self_replay(base: Base, console: Console) -> list[Example]:
    """The base's own answers to forgetless' replay prompts (generated once per base, cached)."""
    from .curate.replay import load_prompts, self_generated_replay

    n = len(load_prompts())
    recs = self_generated_replay(base.model, base.tok, n=n, max_new_tokens=64, cache_key=base.fingerprint, console=console)
    return [record_to_example(r, file="<self-generated replay>", line=i + 1) for i, r in enumerate(recs)]


def extend_tokens(cfg: RunConfig, model: torch.nn.Module, tok: Any, examples: list[Example], run_dir: Path, console: Console) -> Any:
    """The tokens stage: add domain terms to the tokenizer and model (None when disabled).

    It runs after the base reference: drift is measured against the true base, and the extension's
    own step-0 cost shows up as KL at step 0.
    """
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


def plan_steps(n_rows: int, cfg: RunConfig) -> tuple[int, int]:
    """(total optimizer steps, evaluate/checkpoint every N steps)."""
    per_epoch = math.ceil(n_rows / (cfg.train.batch_size * cfg.train.grad_accum))
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(1, math.ceil(per_epoch * cfg.train.epochs))
    every = cfg.train.eval_every or max(1, math.ceil(total / 5))
    return total, every


def make_evaluator(cfg: RunConfig, base: Base, domain: DomainData, ref: tuple[GeneralReference, Path]) -> Evaluator:
    """Both suites, as run at every checkpoint (the domain sets on a fixed, seeded, stratified subset)."""
    return Evaluator(
        base.tok, subset_domain(domain, cfg.eval.domain_limit, seed=cfg.seed), ref[0], batch_size=cfg.eval.batch_size, qa_max_new_tokens=cfg.eval.qa_max_new_tokens,
        system_prompt=cfg.data.system_prompt, general_suites=tuple(cfg.eval.general_suites), suite_limits=cfg.eval.suite_limits,
        base_cache_key=f"{base.fingerprint}:{base.tok_fingerprint}", precision=resolve_precision(cfg.eval.precision, base.device),
    )  # fmt: skip


def write_run_info(cfg: RunConfig, run_dir: Path, base: Base, data: Data, ref: tuple[GeneralReference, Path], extension: Any, dataset: PackedDataset) -> None:
    """run_info.json: versions, content hashes and what the run was built from."""
    atomic_write_json(
        run_dir / A.RUN_INFO,
        run_info(config_yaml=dump_config(cfg), base=base.fingerprint, tokenizer=base.tok_fingerprint, data=data_hashes(data.files),
                 extra={"model": cfg.model.name, "prompt_format": prompt_format(base.tok), "device": base.device, "eval_precision": resolve_precision(cfg.eval.precision, base.device),
                        "train_precision": resolve_precision(cfg.train.precision, base.device), "reference": ref[1].name,
                        "tokenizer_extended": tokenizer_fingerprint(base.tok) if extension is not None else None,
                        "dataset": {"examples": len(data.examples), "rows": dataset.epoch_rows, "replay_rows": dataset.replay_rows, "replay_pool_rows": dataset.replay_pool_rows, "tokens_per_epoch": dataset.num_tokens}}),
    )  # fmt: skip


def attach(cfg: RunConfig, model: torch.nn.Module, extension: Any, console: Console) -> torch.nn.Module:
    """The adapter on the frozen base (or every weight trainable for full fine-tuning)."""
    token_kwargs: dict[str, Any] = {}
    if extension is not None:
        from .tokens.extend import lora_token_kwargs

        token_kwargs = lora_token_kwargs(model, extension)
    model = attach_adapter(model, cfg.lora, **token_kwargs)
    n_train, n_total = trainable_parameters(model)
    console.print(f"  {cfg.lora.mode}: {n_train:,} of {n_total:,} parameters trainable ({100 * n_train / n_total:.2f}%)")
    return model


@dataclass
class Trained:
    """What training measured: every evaluation, where the budget stopped it, and how long it took."""

    history: list[dict[str, Any]]
    stopped_at: int | None
    train_s: float
    judge: BudgetJudge
    main_process: bool


def train(
    cfg: RunConfig, model: torch.nn.Module, tok: Any, dataset: PackedDataset, evaluator: Evaluator, total_steps: int, every: int,
    device: str, extension: Any, resume: bool, console: Console,
) -> Trained:  # fmt: skip
    """Step 0 (the base), then the Trainer with both suites and the budget at every checkpoint.

    Evaluation, verdict and early stop are :class:`ForgetlessCallback`'s, the same callback users
    add to their own trainers; on a resume it counts the evaluations before the checkpoint towards
    patience.
    """
    regs = build_regularizers(cfg.train, model, dataset, tok)
    with console.status("scoring the base on the general suites"):
        judge = BudgetJudge(cfg.budget, evaluator.ensure_base_scores(model))
    recorder = MetricsRecorder(cfg.run_dir / A.METRICS, cfg.run_dir / A.TENSORBOARD_DIR)
    resume_from = find_resume_point(cfg.run_dir / A.CHECKPOINTS_DIR, recorder, console) if resume else None
    fl = ForgetlessCallback(evaluator=evaluator, recorder=recorder, judge=judge, budget=cfg.budget, patience=cfg.train.patience, write_outputs=False)
    if fl.needs_base():
        with console.status("evaluating the base model (step 0)"):
            _, was_cached = fl.evaluate_base(model)
        if was_cached:
            console.print("  step 0 = the base model: evaluation read from the cache")
    trainer = build_trainer(cfg, model, tok, dataset, evaluator, recorder, total_steps=total_steps, every=every, device=device,
                            console=console, regularizers=regs, judge=judge, callback=fl,
                            token_lr=cfg.tokens.lr if extension is not None else None)  # fmt: skip
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.time() - t0
    recorder.close()
    stopped_at = fl.stopper.stopped_at
    if stopped_at is not None:
        console.print(f"[yellow]early stop at step {stopped_at}: {cfg.train.patience} evaluations in a row outside the budget, the drift not coming back[/]")
    history = sorted(recorder.read(), key=lambda h: h["step"])
    return Trained(history, stopped_at, train_s, judge, trainer.is_world_process_zero())


def export_selection(cfg: RunConfig, model: torch.nn.Module, tok: Any, sel: Selection, extension: Any, console: Console) -> Path | None:
    """Copy the selected checkpoint into adapter/ (model/ for full fine-tuning) at its chosen scale;
    with domain tokens, also the extended base + plain adapter and a merged model. None: base kept."""
    if sel.step is None:
        return None
    ckpt = cfg.run_dir / A.CHECKPOINTS_DIR / f"checkpoint-{sel.step}"
    dest = cfg.run_dir / (A.ADAPTER_DIR if cfg.lora.mode == "lora" else A.MODEL_DIR)
    # With domain tokens the adapter's saved rows index the extended vocabulary: its tokenizer goes
    # with it, so serve, evaluate --served and deploy load the pair from adapter/ alone.
    copy_checkpoint(ckpt, dest, tok, full=cfg.lora.mode == "full", with_tokenizer=extension is not None)
    if is_peft(model):
        bake_scale(dest, sel.scale)
    if extension is not None:
        from .tokens.export import export_extended

        load_adapter_weights(model, ckpt)
        with console.status("exporting extended base + plain adapter, and a merged model"):
            export_extended(model, tok, cfg.run_dir / A.TOKENS_DIR / A.TOKENS_EXPORT_DIR, extra_info={"step": sel.step, "scale_note": "exports use adapter scale 1.0"})
    return dest


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
    with console.status("calibrating the serving router on the base model"), adapter_off(model):
        info = calibrate_router(model, tok, domain, general, run_dir, batch_size=cfg.eval.batch_size)
    console.print(f"  router: {info.get('method')}, calibration AUROC {info.get('calibration_auroc', float('nan')):.3f}, threshold {info['threshold']:.3g}")
    return info


def make_summary(cfg: RunConfig, sel: Selection, trained: Trained, export_dir: Path | None, router_info: dict[str, Any] | None, total_s: float,
                 selected_eval: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """summary.json: the verdict, the selection (and its scores on the full sets), the budget and what everything cost."""
    history = trained.history
    return {
        "verdict": sel.verdict,
        "selected": sel.as_summary(),
        "early_stop_step": trained.stopped_at,
        "selected_eval": selected_eval,
        "base": history[0] if history else None,
        "final": history[-1] if history else None,
        "budget": cfg.budget.model_dump(),
        "timing": {"total_s": round(total_s, 1), **eval_timing(history, trained.train_s)},
        "export": export_dir.name if export_dir is not None else None,
        "router": {k: router_info[k] for k in ("method", "threshold", "calibration_auroc", "domain_to_base", "general_to_base") if k in router_info} if router_info else None,
    }  # fmt: skip


def write_reports(cfg: RunConfig, run_dir: Path, history: list[dict[str, Any]], summary: dict[str, Any], scale_curve: list[dict[str, Any]],
                  sections: list[str] | None = None) -> None:  # fmt: skip
    """summary.json, curves.png, report.md and the offline report.html."""
    from .deploy.report_html import write_report as write_html_report

    atomic_write_json(run_dir / A.SUMMARY, summary)
    plot_curves(history, run_dir / A.CURVES_PNG, budget_kl=cfg.budget.general_kl)
    write_report(run_dir / A.REPORT_MD, title=f"forgetless run: {run_dir.name}", history=history, summary=summary, budget=cfg.budget, scale_curve=scale_curve, extra_sections=sections)
    write_html_report(run_dir)  # the same, offline in a browser: curves embedded, lineage, verdict
