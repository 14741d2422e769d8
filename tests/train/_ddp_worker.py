"""`forgetless` CLI entry point with spies, for tests that launch it under torchrun.

Each rank logs, one JSON line per event, to ``$FORGETLESS_SPY_DIR/rank<R>.jsonl``:
``evaluate`` (an evaluation ran on this rank), ``metrics_line`` (this rank appended to
metrics.jsonl) and ``mark_complete`` (this rank wrote a checkpoint's COMPLETE marker). Files on
disk cannot show *who* wrote them or how often; these logs can. Everything else is the real CLI.

Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def _log(event: str, **fields: Any) -> None:
    rank = os.environ.get("RANK", "0")
    with open(Path(os.environ["FORGETLESS_SPY_DIR"]) / f"rank{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, **fields}) + "\n")


def install_spies() -> None:
    """Wrap the three functions whose calls the DDP test counts."""
    from forgetless.train import callbacks, trainer

    real_mark, real_append, real_eval = trainer.mark_complete, callbacks.append_jsonl, trainer.ForgetlessTrainer.evaluate

    def mark_complete(path: Path) -> None:
        real_mark(path)
        _log("mark_complete", checkpoint=Path(path).name)

    def append_jsonl(path: Path, record: dict[str, Any]) -> None:
        real_append(path, record)
        _log("metrics_line", file=Path(path).name, step=record.get("step"))

    def evaluate(self: Any, *a: Any, **kw: Any) -> dict[str, float]:
        out = real_eval(self, *a, **kw)
        _log("evaluate", step=self.state.global_step, fsdp=bool(self.is_fsdp_enabled))
        return out

    trainer.mark_complete = mark_complete
    callbacks.append_jsonl = append_jsonl
    trainer.ForgetlessTrainer.evaluate = evaluate


if __name__ == "__main__":
    install_spies()
    from forgetless.cli import main

    sys.exit(main())
