"""forgetless inside your own trainer: dual evaluation, the forgetting budget and the forgetting
controls for ``transformers.Trainer`` and TRL's ``SFTTrainer`` (see docs/integrations.md).

- :class:`ForgetlessCallback`: both suites (domain + general drift and accuracy, against the cached
  base) at the trainer's evaluation steps, logged through the trainer's loggers, the budget with
  early stop, and metrics.jsonl / curves.png / summary.json as ``forgetless run`` writes them.
- :func:`forgetless_trainer` / :class:`ForgetlessLossMixin`: KL-to-base, L2-SP and EWC terms
  added to the trainer's own loss (:func:`add_forgetting_controls` for a trainer already built).
- :func:`mix_replay`: general replay rows mixed into a ``datasets.Dataset``, marked for the KL term.
"""

from .callback import ForgetlessCallback, base_weights_fingerprint, judge_budget
from .loss import ForgetlessLossMixin, ReplayCollator, add_forgetting_controls, forgetless_trainer
from .replay import base_replay, mix_replay

__all__ = [
    "ForgetlessCallback",
    "ForgetlessLossMixin",
    "ReplayCollator",
    "add_forgetting_controls",
    "base_replay",
    "base_weights_fingerprint",
    "forgetless_trainer",
    "judge_budget",
    "mix_replay",
]
