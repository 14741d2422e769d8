"""ForgetlessTrainer: the HF Trainer with forgetless' loss terms, evaluated by ForgetlessCallback.

We subclass rather than reimplement: the optimizer, scheduler, gradient accumulation, mixed
precision, checkpoint/resume and accelerate (DDP/FSDP/DeepSpeed) all stay the Trainer's. The loss
terms are :class:`forgetless.integrations.ForgetlessLossMixin` and the evaluation of both suites is
:class:`forgetless.integrations.ForgetlessCallback`: the same pieces a user adds to their own
trainer. What is left here is the run folder's checkpoint marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..integrations.loss import ForgetlessLossMixin
from .checkpoints import mark_complete


class ForgetlessTrainer(ForgetlessLossMixin, Trainer):
    """Trainer with the regularizer terms whose checkpoints are marked complete once fully written."""

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        # Every rank writes its own rng_state_<rank>.pth: wait until all have, so the marker never
        # declares a checkpoint complete that a distributed resume could not load.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # Only now is every file of the checkpoint on disk: mark it loadable.
            mark_complete(Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}")
