"""Checkpoint bookkeeping: which checkpoints are complete, and where to resume.

The HF Trainer writes a checkpoint file by file. A run killed mid-write leaves a folder that looks
like a checkpoint but is not; we write a ``COMPLETE`` marker (atomically) only after the Trainer
has finished saving, and never load a checkpoint without it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import CHECKPOINT_COMPLETE
from ..io import atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

    from .callbacks import MetricsRecorder

_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """The step number of a ``checkpoint-N`` folder, else None."""
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else None


def mark_complete(path: Path) -> None:
    """Declare a checkpoint fully written."""
    atomic_write_text(path / CHECKPOINT_COMPLETE, "ok\n")


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / CHECKPOINT_COMPLETE).exists()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def remove_incomplete(folder: Path) -> list[Path]:
    """Delete checkpoint folders that lack the marker (half-written by a killed run); return them."""
    removed = []
    if folder.exists():
        for p in folder.iterdir():
            if p.is_dir() and checkpoint_step(p) is not None and not (p / CHECKPOINT_COMPLETE).exists():
                try:
                    shutil.rmtree(p)
                except FileNotFoundError:
                    pass  # every rank of a distributed resume sweeps the same folder; another got there first
                removed.append(p)
    return removed


def last_complete(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    done = complete_checkpoints(folder)
    return done[-1] if done else None


def find_resume_point(ckpt_dir: Path, recorder: MetricsRecorder, console: Console) -> str | None:
    """The newest complete checkpoint (half-written ones are deleted); metrics after it are dropped."""
    for p in remove_incomplete(ckpt_dir):
        console.print(f"  removed incomplete {p.name}")
    last = last_complete(ckpt_dir)
    recorder.truncate_after(checkpoint_step(last) or 0 if last else 0)
    if last is None:
        return None
    console.print(f"  resuming from {last.name}")
    return str(last)


def copy_checkpoint(checkpoint: Path, dest: Path, tok: Any, *, full: bool, with_tokenizer: bool = False) -> None:
    """Copy a checkpoint's weights into ``dest``, atomically; the tokenizer too for a full model or
    when ``with_tokenizer`` (an adapter trained on added vocabulary is unusable without it)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wanted = ("config.json", "generation_config.json", "model.safetensors") if full else ("adapter_config.json", "adapter_model.safetensors")
    for name in wanted:
        if (checkpoint / name).exists():
            shutil.copy2(checkpoint / name, tmp / name)
    if full or with_tokenizer:
        tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
