"""The HF ``Trainer`` as forgetless configures it (the one place its arguments are set).

Checkpoints every ``every`` steps, both evaluation suites and the budget with each checkpoint
(:class:`ForgetlessCallback`, the same callback users add to their own trainers), precision from
``train.precision``, an optimizer group of its own for new token rows, and our Rich progress bar
and metrics files instead of the Trainer's printing.
"""

from __future__ import annotations

import os
from importlib.metadata import version as _version
from typing import Any

import torch
from rich.console import Console
from transformers import PrinterCallback, ProgressCallback, TrainingArguments

from .. import artifacts as A
from ..config import RunConfig
from ..errors import ForgetlessError
from ..evaluate.precision import resolve as resolve_precision
from ..evaluate.runner import Evaluator
from ..integrations.callback import ForgetlessCallback
from ..lmhead import lm_split
from .budget import BudgetJudge
from .callbacks import EvalScheduleCallback, LogCallback, MetricsRecorder, RichProgressCallback
from .dataset import PackedCollator
from .kl_control import make_kl_controller
from .regularizers import Regularizers
from .trainer import ForgetlessTrainer


HEAD_CHUNK_AUTO = 256


def head_chunk(setting: int, model: torch.nn.Module) -> int:
    """Positions per LM-head chunk in the training loss: ``setting``, or for -1 (auto) 256 whenever
    the model is laid out as a trunk plus a separate LM head, else 0 (whole logits)."""
    if setting >= 0:
        return setting
    return HEAD_CHUNK_AUTO if lm_split(model) is not None else 0


def checkpointing_args(on: bool) -> dict[str, Any]:
    """TrainingArguments for activation (gradient) checkpointing, under the name this transformers
    reads: 5.x renamed ``gradient_checkpointing*`` to ``activation_checkpointing*`` and warns on the
    old names, which older releases still need."""
    prefix = "activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient"
    # Non-reentrant checkpointing needs no input that requires grad (the base is frozen under
    # LoRA) and works under DDP and FSDP.
    return {f"{prefix}_checkpointing": on, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if on else None}


def build_trainer(
    cfg: RunConfig,
    model: torch.nn.Module,
    tok: Any,
    dataset: Any,
    evaluator: Evaluator | None,
    recorder: MetricsRecorder,
    *,
    total_steps: int,
    every: int,
    device: str,
    console: Console | None = None,
    regularizers: Regularizers | None = None,
    judge: BudgetJudge | None = None,
    extra_callbacks: list[Any] | None = None,
    token_lr: float | None = None,
    callback: ForgetlessCallback | None = None,
) -> ForgetlessTrainer:
    """The HF Trainer as forgetless configures it: checkpoint + both suites every ``every`` steps.

    ``callback``: the run's :class:`ForgetlessCallback` (made here from ``evaluator``, ``recorder``
    and ``judge`` when not given; none when ``evaluator`` is None, e.g. for throughput benchmarks).
    """
    t = cfg.train
    args = TrainingArguments(
        output_dir=str(cfg.run_dir / A.CHECKPOINTS_DIR),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        lr_scheduler_type=t.lr_scheduler,
        max_steps=total_steps,
        logging_steps=1,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=t.keep_checkpoints or None,
        eval_strategy="no",  # EvalScheduleCallback triggers our own evaluate() with each save
        report_to="none",  # MetricsRecorder writes TensorBoard itself, step 0 included
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=resolve_precision(t.precision, device) == "bf16" or (cfg.model.dtype == "bfloat16" and device == "cuda"),
        dataloader_num_workers=0,
        neftune_noise_alpha=t.neftune_alpha,
        **checkpointing_args(t.gradient_checkpointing),
    )
    optimizers: tuple[Any, Any] = (None, None)
    if token_lr is not None:
        # New embedding rows get their own group: their own LR, and no weight decay (which would
        # pull them towards zero, not towards their initialisation).
        from ..tokens.extend import param_groups

        groups = param_groups(model, lr=t.lr, token_lr=token_lr, weight_decay=t.weight_decay)
        optimizers = (torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay), None)
    log_cb = LogCallback(recorder)
    if callback is None and evaluator is not None:
        callback = ForgetlessCallback(evaluator=evaluator, recorder=recorder, judge=judge, patience=t.patience, budget=cfg.budget, write_outputs=False)
    trainer = ForgetlessTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PackedCollator(pad_id=tok.pad_token_id or 0, replay_kl_only=t.kl_to_base > 0 and not t.replay_ce),
        regularizers=regularizers,
        # With a KL budget the budget steers the KL weight during training (train.kl_control).
        kl_controller=make_kl_controller(t, cfg.budget, kl_weight=regularizers.kl_weight) if regularizers is not None else None,
        replay_every_batch=t.replay_every_batch,
        head_chunk=head_chunk(t.head_chunk, model),
        callbacks=[EvalScheduleCallback(every), *([callback] if callback else []), log_cb, RichProgressCallback(console, log_cb), *(extra_callbacks or [])],
        optimizers=optimizers,
    )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        # accelerate switches to FSDP only on accelerator devices; on CPU processes it keeps plain
        # data parallelism and ignores the request, so a "sharded" run would silently be DDP.
        raise ForgetlessError(
            f"FSDP was requested (ACCELERATE_USE_FSDP=true) but accelerate {_version('accelerate')} does not shard on "
            f"this launch (distributed type {trainer.accelerator.distributed_type}); it shards only across processes on GPUs or other "
            "accelerators. Unset ACCELERATE_USE_FSDP to train data-parallel (DDP) instead."
        )
    # Our Rich bar and metrics files replace the Trainer's own printing.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
