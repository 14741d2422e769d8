"""An Axolotl plugin that adds forgetless to an Axolotl run (NOT RUN: see docs/integrations.md).

Axolotl 0.19 pins transformers 5.16.1, peft 0.20, trl 1.9 and pulls xformers/triton/bitsandbytes,
so it cannot be installed beside forgetless' stack on the CPU development machine; this file is
written against Axolotl's documented BasePlugin hooks (axolotl/integrations/base.py, 0.19.0) and
uses only forgetless' public API, which the tests exercise with the plain Trainer and SFTTrainer.

Put this folder on PYTHONPATH and add to the Axolotl YAML:

    plugins:
      - forgetless_plugin.ForgetlessPlugin
    forgetless_eval_qa: examples/data/pharma/heldout_qa.jsonl
    forgetless_eval_mc: examples/data/pharma/heldout_mc.jsonl
    forgetless_budget_kl: 0.1
    forgetless_kl_to_base: 1.0
    eval_steps: 46             # forgetless scores both suites at Axolotl's evaluation steps

Replay rows need a boolean `replay` column in the training set (forgetless.integrations.mix_replay
on the dataset before it is tokenized), which Axolotl's dataset loaders do not add; without it,
set forgetless_kl_to_base: 0 and keep the evaluation, the budget and L2-SP/EWC.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from forgetless.integrations import ForgetlessCallback, add_forgetting_controls


class ForgetlessPlugin(BasePlugin):
    """forgetless' dual evaluation, forgetting budget and KL-to-base for an Axolotl trainer."""

    def post_trainer_create(self, cfg, trainer):  # noqa: ANN001, ANN201
        # The loss terms go onto the trainer Axolotl built (its class gains the forgetless mixin).
        kl = float(cfg.get("forgetless_kl_to_base") or 0.0)
        l2sp = float(cfg.get("forgetless_l2sp") or 0.0)
        if kl or l2sp:
            add_forgetting_controls(trainer, kl_to_base=kl, l2sp=l2sp)

    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ANN001, ANN201
        budget = {"general_kl": cfg.get("forgetless_budget_kl")} if cfg.get("forgetless_budget_kl") is not None else {}
        return [ForgetlessCallback(trainer, eval_qa=cfg.get("forgetless_eval_qa"), eval_mc=cfg.get("forgetless_eval_mc"), budget=budget)]
