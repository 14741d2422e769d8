"""ForgetlessCallback: forgetless' dual evaluation and forgetting budget inside any HF-style trainer.

At each of the trainer's evaluations (``on_evaluate``; or every ``every`` steps on its own) it
scores both suites on the current weights: the domain suite (held-out QA, multiple choice,
perplexity) and general drift (KL to the cached base reference) plus the general accuracy suites.
Every metric goes to ``metrics.jsonl`` and through the trainer's own ``log`` as ``eval_<metric>``
(so TensorBoard, W&B, MLflow, whatever ``report_to`` names, file it under ``eval/<metric>``) and
into the metrics of the evaluation (so ``metric_for_best_model`` can name one). The budget is judged at each evaluation;
``patience`` evaluations in a row outside it stop training. At the end of training the callback
writes ``curves.png``, ``summary.json`` (the verdict and the best checkpoint inside the budget)
and ``report.md``, as ``forgetless run`` does. forgetless' own pipeline evaluates through it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .. import artifacts as A
from ..adapter import adapter_off, is_peft
from ..budget import BudgetConfig
from ..evaluate.config import EvalConfig
from ..evaluate.runner import Evaluation, Evaluator, eval_timing, is_noop_adapter
from ..io import atomic_write_json
from ..report import plot_curves, write_report
from ..train.budget import BudgetJudge, BudgetStopCallback, Selection, select
from ..train.callbacks import EvalScheduleCallback, MetricsRecorder


def judge_budget(judge: BudgetJudge | None, ev: Evaluation) -> dict[str, Any]:
    """One fresh evaluation's metrics line with the budget's verdict added.

    The verdict is :func:`forgetless.budget.judge`'s (through :meth:`BudgetJudge.judged`):
    ``budget/state`` (inside, outside or unset), ``budget/outside`` and ``budget/violations``.
    Without a judge the line is returned as measured.
    """
    return judge.judged(ev) if judge is not None else dict(ev.metrics)


def base_weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the base weights in memory (adapter weights left out), to key the base caches.

    Used when the callback is not told the base's fingerprint: it costs one pass over the weights
    (about a second for a 135M model on CPU), once per training.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if any(k in name for k in ("lora_", "modules_to_save", "trainable_tokens")):
            continue
        h.update(name.replace("base_model.model.", "").replace(".base_layer", "").encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def own_precision(model: torch.nn.Module) -> Iterator[None]:
    """Run the block on ``model``'s own forward, not the trainer's mixed-precision one.

    Under ``bf16``/``fp16`` training, accelerate replaces the model's ``forward`` with one wrapped
    in autocast (keeping the original as ``_original_forward``). Evaluation has its own precision
    (``eval.precision``), which keys the cached base reference and base scores: evaluated through
    the trainer's wrapper, an "fp32" evaluation would silently be bf16 and its caches would then
    disagree with every fp32 run (measured in a test: KL on the math prompts 0.003566 instead of 0.003581 at step 3, after an
    earlier bf16 run had filled the cache).
    """
    patched, original = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if patched is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = patched


def _calling_trainer() -> Trainer | None:
    """The Trainer whose ``train()`` is running this callback event, found on the call stack.

    For trainers built by a framework (LLaMA-Factory's ``run_exp(callbacks=...)``) where the user
    never holds the trainer to bind: callback events are always called from the Trainer's methods.
    """
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


class ForgetlessCallback(TrainerCallback):
    """Both suites and the forgetting budget at the trainer's evaluation steps.

    Args:
        trainer: the trainer to log through. Optional: a trainer built by :func:`forgetless_trainer`
            binds itself, and any other is found when its ``train()`` starts.
        run_dir: where metrics.jsonl, curves.png, summary.json and report.md go (default: the
            trainer's ``output_dir``).
        eval_qa, eval_mc, eval_text: the held-out domain files (JSONL, as for ``forgetless run``).
        eval: :class:`EvalConfig` (or its fields as a dict): general prompts, suites, limits, precision.
        budget: :class:`BudgetConfig` (or a dict): ``general_kl``, ``general_accuracy_drop``.
        patience: stop after this many evaluations in a row outside the budget.
        every: also evaluate (and save a checkpoint) every N steps and at the last step, without
            the trainer's own evaluation; None follows the trainer's ``eval_strategy``.
        system_prompt: system prompt for chat-formatted evaluation prompts.
        base_fingerprint: identifies the base weights for the caches (default: hashed from memory).
        write_outputs: write curves.png, summary.json and report.md at the end of training.
        evaluator, recorder, judge: ready-made pieces (forgetless' pipeline passes its own).
    """

    def __init__(
        self,
        trainer: Trainer | None = None,
        *,
        run_dir: str | Path | None = None,
        eval_qa: str | Path | None = None,
        eval_mc: str | Path | None = None,
        eval_text: str | Path | None = None,
        eval: EvalConfig | dict[str, Any] | None = None,  # noqa: A002 - the config section's name
        budget: BudgetConfig | dict[str, Any] | None = None,
        patience: int = 3,
        every: int | None = None,
        system_prompt: str | None = None,
        base_fingerprint: str | None = None,
        write_outputs: bool = True,
        evaluator: Evaluator | None = None,
        recorder: MetricsRecorder | None = None,
        judge: BudgetJudge | None = None,
    ) -> None:
        self.trainer = trainer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.domain_files = (eval_qa, eval_mc, eval_text)
        self.eval_cfg = eval if isinstance(eval, EvalConfig) else EvalConfig(**(eval or {}))
        self.budget = budget if isinstance(budget, BudgetConfig) else BudgetConfig(**(budget or {}))
        self.stopper = BudgetStopCallback(patience)
        self.schedule = EvalScheduleCallback(every) if every else None
        self.system_prompt = system_prompt
        self.base_fingerprint = base_fingerprint
        self.write_outputs = write_outputs
        self.evaluator = evaluator
        self.recorder = recorder
        self.judge = judge if judge is not None else BudgetJudge(self.budget)
        self.selection: Selection | None = None
        self._evaluated_step: int | None = None
        self._t_train: float | None = None
        self.setup_s: float | None = None

    # --- setting up -------------------------------------------------------------------------

    def bind(self, trainer: Trainer) -> ForgetlessCallback:
        """Log through ``trainer`` (its ``log`` feeds every ``report_to`` logger)."""
        self.trainer = trainer
        return self

    def prepare(self, model: torch.nn.Module, tok: Any, device: torch.device | str) -> None:
        """Build what is missing: the base reference (cached), the evaluator, the base's suite scores."""
        from ..evaluate.domain import load_domain
        from ..evaluate.drift import cached_reference, load_general_prompts
        from ..evaluate.precision import resolve as resolve_precision
        from ..models import tokenizer_fingerprint

        if self.recorder is None:
            run_dir = self.run_dir or Path(self.trainer.args.output_dir if self.trainer is not None else ".")
            self.run_dir = run_dir
            # No TensorBoard of its own here: metrics reach the user's loggers through the trainer.
            self.recorder = MetricsRecorder(run_dir / A.METRICS, None)
        if self.evaluator is None:
            if tok is None:
                raise ValueError("ForgetlessCallback needs the tokenizer: pass processing_class= to the trainer")
            e = self.eval_cfg
            peft = is_peft(model)
            if not peft and self.base_fingerprint is None and self.trainer is not None and self.trainer.state.global_step > 0:
                raise ValueError("resuming full fine-tuning: the weights are no longer the base; pass base_fingerprint= of the first run")
            base_fp = self.base_fingerprint or base_weights_fingerprint(model)
            tok_fp = tokenizer_fingerprint(tok)
            precision = resolve_precision(e.precision, device)
            prompts = load_general_prompts(e.general_prompts, e.general_limit)
            was = model.training
            model.eval()
            with adapter_off(model):
                ref, _, _ = cached_reference(
                    model, tok, prompts, base_fingerprint=base_fp, tokenizer_fingerprint=tok_fp, max_new_tokens=e.general_max_new_tokens,
                    topk=e.kl_topk, batch_size=e.batch_size, system_prompt=self.system_prompt, precision=precision,
                )  # fmt: skip
            model.train(was)
            qa, mc, text = (Path(p) if p is not None else None for p in self.domain_files)
            self.evaluator = Evaluator(
                tok, load_domain(qa, mc, text), ref, batch_size=e.batch_size, qa_max_new_tokens=e.qa_max_new_tokens,
                system_prompt=self.system_prompt, general_suites=tuple(e.general_suites), suite_limits=e.suite_limits,
                base_cache_key=f"{base_fp}:{tok_fp}", precision=precision,
            )  # fmt: skip
        if not self.judge.base_scores:
            self.judge.base_scores = self.evaluator.ensure_base_scores(model)

    def needs_base(self) -> bool:
        """True while metrics.jsonl has no step-0 (base) evaluation."""
        assert self.recorder is not None
        return not any(h["step"] == 0 for h in self.recorder.read())

    def evaluate_base(self, model: torch.nn.Module) -> tuple[dict[str, Any], bool]:
        """Step 0: the base model, judged like every checkpoint and recorded. Returns
        ``(metrics, read_from_cache)``.

        A fresh LoRA is an exact no-op, so step 0 is the base: scored once per base, data and
        settings, then read from the user cache (KL is 0 by construction).
        """
        assert self.evaluator is not None and self.recorder is not None
        if is_noop_adapter(model):
            ev, cached = self.evaluator.evaluate_base(model)
        else:
            ev, cached = self.evaluator.evaluate(model, step=0), False
        metrics = judge_budget(self.judge, ev)
        self.recorder.record_eval(metrics)
        self._log(metrics)
        return metrics, cached

    # --- trainer events ---------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, processing_class: Any = None, **kw: Any) -> None:
        if self.trainer is None:
            self.trainer = _calling_trainer()
        if self.trainer is None:
            raise ValueError("ForgetlessCallback is not bound to a trainer: ForgetlessCallback(trainer, ...), .bind(trainer), or build the trainer with forgetless_trainer(...)")
        t0 = time.time()
        with own_precision(model):
            self.prepare(model, processing_class if processing_class is not None else self.trainer.processing_class, args.device)
            assert self.recorder is not None
            if state.global_step > 0:
                # A resumed run: evaluations after the checkpoint are redone; earlier ones still count.
                self.recorder.truncate_after(state.global_step)
                self.stopper.restore(self.recorder.read())
            elif state.is_world_process_zero and self.needs_base():
                self.evaluate_base(model)
        self._t_train = time.time()
        self.setup_s = self._t_train - t0  # base reference, base suite scores, step 0 (cached after the first run)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kw: Any) -> TrainerControl:
        if self.schedule is not None:
            due = TrainerControl()
            self.schedule.on_step_end(args, state, due)
            if due.should_evaluate:
                self._evaluate(state, control, model, None)
                control.should_save = True  # every evaluated step has a checkpoint to select
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, Any] | None = None, model: Any = None, **kw: Any) -> TrainerControl:
        return self._evaluate(state, control, model, metrics)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not self.write_outputs or not state.is_world_process_zero or self.recorder is None:
            return
        train_s = time.time() - (self._t_train or time.time())
        self.write_summary(args, train_s)

    # --- the work ---------------------------------------------------------------------------

    def _evaluate(self, state: TrainerState, control: TrainerControl, model: Any, merge_into: dict[str, Any] | None) -> TrainerControl:
        if self._evaluated_step == state.global_step:
            return control  # the trainer's evaluation and ``every`` fell on the same step
        assert self.evaluator is not None and self.recorder is not None, "ForgetlessCallback: on_train_begin did not run"
        model = model if model is not None else self.trainer.model  # type: ignore[union-attr]
        with own_precision(model):
            ev = self.evaluator.evaluate(model, step=state.global_step)
        extra = getattr(self.trainer, "kl_eval_terms", None)
        if extra is not None:
            # The per-step replay KL and the KL controller (re-aimed on this evaluation's general
            # KL) go on the same line, before the budget is judged.
            ev = Evaluation({**ev.metrics, **extra(ev.metrics.get("general/kl"))}, ev.scores)
        metrics = judge_budget(self.judge, ev)
        if state.is_world_process_zero:
            self.recorder.record_eval(metrics)
        self._evaluated_step = state.global_step
        logged = self._log(metrics)
        if merge_into is not None:
            merge_into.update(logged)  # visible to later callbacks and metric_for_best_model
        self.stopper.on_evaluate(None, state, control, metrics=metrics)  # type: ignore[arg-type]
        if state.is_world_process_zero:
            self.selection = select(self.recorder.read(), self.budget)
        return control

    def _log(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Send the scalars through the trainer's loggers as ``eval_<name>``."""
        logs = {f"eval_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.trainer is not None:
            # The base Trainer's log: a subclass's log (TRL's) would fold its pending training
            # averages into this evaluation's line and take them from the next training log.
            Trainer.log(self.trainer, dict(logs))
        return logs

    def write_summary(self, args: TrainingArguments | None, train_s: float) -> dict[str, Any]:
        """curves.png, summary.json and report.md from metrics.jsonl (what ``forgetless run`` writes)."""
        assert self.recorder is not None
        run_dir = self.recorder.metrics_path.parent
        history = sorted(self.recorder.read(), key=lambda h: h["step"])
        sel = select(history, self.budget)
        self.selection = sel
        ckpt = Path(args.output_dir) / f"checkpoint-{sel.step}" if args is not None and sel.step is not None else None
        selected = sel.as_summary()
        if selected is not None:
            selected["checkpoint"] = str(ckpt) if ckpt is not None and ckpt.exists() else None
        summary = {
            "verdict": sel.verdict,
            "selected": selected,
            "early_stop_step": self.stopper.stopped_at,
            "base": history[0] if history else None,
            "final": history[-1] if history else None,
            "budget": self.budget.model_dump(),
            "timing": {**eval_timing(history, train_s), "setup_s": round(self.setup_s, 1) if self.setup_s is not None else None},
        }  # fmt: skip
        atomic_write_json(run_dir / A.SUMMARY, summary)
        plot_curves(history, run_dir / A.CURVES_PNG, budget_kl=self.budget.general_kl)
        write_report(run_dir / A.REPORT_MD, title=f"forgetless evaluation: {run_dir.name}", history=history, summary=summary, budget=self.budget)
        return summary

