"""Trainer callbacks: when to evaluate and checkpoint, where metrics go, and progress display."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..errors import InputError
from ..io import append_jsonl, atomic_write_text

# Where each launcher puts the global rank: torchrun / `accelerate launch --multi_gpu` (RANK) and
# MPI launchers (what `accelerate launch --cpu` uses for several CPU processes).
_RANK_ENV = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def is_main_process() -> bool:
    """True in a single process, and on global rank 0 of a distributed launch.

    Read from the launcher's environment rather than torch.distributed, so it can be asked before
    the Trainer has initialised the process group (e.g. to decide who writes the run folder).
    """
    for name in _RANK_ENV:
        if os.environ.get(name, "").strip():
            return int(os.environ[name]) == 0
    return True


class EvalScheduleCallback(TrainerCallback):
    """Evaluate both suites and save a checkpoint every ``every`` steps and at the last step.

    Evaluation and checkpointing always happen together, so every checkpoint on disk has both
    curves' values and can be chosen by the forgetting budget.
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> TrainerControl:
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


class MetricsRecorder:
    """Appends evaluation metrics to metrics.jsonl and mirrors scalars to TensorBoard (``tb_dir``;
    None: no TensorBoard of its own, as when the metrics go through a trainer's loggers).

    ``enabled`` defaults to :func:`is_main_process`: in a distributed launch every rank evaluates
    (so early-stop decisions agree) but only rank 0 writes, so each evaluation is one line.
    """

    def __init__(self, metrics_path: Path, tb_dir: Path | None, *, enabled: bool | None = None) -> None:
        self.metrics_path = metrics_path
        self.tb_dir = tb_dir
        self.enabled = is_main_process() if enabled is None else enabled
        self._writer = None

    def _tb(self):  # noqa: ANN202 - SummaryWriter is imported lazily (tensorboard is slow to import)
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tb_dir))
        return self._writer

    def record_eval(self, metrics: dict[str, Any]) -> None:
        """Persist one evaluation (a line of metrics.jsonl) and its scalars."""
        if not self.enabled:
            return
        append_jsonl(self.metrics_path, metrics)
        if self.tb_dir is None:
            return
        w = self._tb()
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step" and math.isfinite(float(v)):
                w.add_scalar(k, v, metrics["step"])
        w.flush()

    def record_train(self, step: int, logs: dict[str, float]) -> None:
        """Mirror the Trainer's training logs (loss, lr, grad norm, regularizer terms)."""
        if not self.enabled or self.tb_dir is None:
            return
        w = self._tb()
        for k, v in logs.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                w.add_scalar(f"train/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """Drop evaluations newer than ``step`` (a resumed run redoes them)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [json.dumps(h, ensure_ascii=False) for h in self._parse() if h["step"] <= step]
        atomic_write_text(self.metrics_path, "".join(l + "\n" for l in kept))

    def _parse(self) -> list[dict[str, Any]]:
        """The file's records. A run killed mid-append (or a write still in flight, seen from
        another rank) can leave the last line cut short, without its newline: that line is not a
        record yet and is skipped; a resumed run redoes its step. Any other bad line is
        corruption and raises, naming the line."""
        text = self.metrics_path.read_text(encoding="utf-8")
        lines = text.splitlines()
        out = []
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) and not text.endswith("\n"):
                    break
                raise InputError(f"unreadable metrics line ({e.msg})", file=self.metrics_path, line=i) from e
        return out

    def read(self) -> list[dict[str, Any]]:
        """All evaluations recorded so far."""
        if not self.metrics_path.exists():
            return []
        return self._parse()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LogCallback(TrainerCallback):
    """Forwards the Trainer's logs to the recorder and remembers the latest training loss."""

    def __init__(self, recorder: MetricsRecorder) -> None:
        self.recorder = recorder
        self.last: dict[str, float] = {}

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict | None = None, **kw: Any) -> None:
        if logs and any(k.startswith("eval_") for k in logs):
            return  # an evaluation's line: record_eval mirrors those scalars under their own names
        if logs and state.is_world_process_zero:
            self.last.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            self.recorder.record_train(state.global_step, logs)


class RichProgressCallback(TrainerCallback):
    """A Rich progress bar over optimizer steps, with the latest loss."""

    def __init__(self, console: Any = None, log_cb: LogCallback | None = None) -> None:
        self.console = console
        self.log_cb = log_cb
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.progress is not None:
            loss = self.log_cb.last.get("loss") if self.log_cb else None
            info = f"loss {loss:.3f}" if loss is not None else ""
            self.progress.update(self.task, completed=state.global_step, info=info)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
