"""LLaMA-Factory with forgetless' evaluation and budget (NOT RUN: see docs/integrations.md).

LLaMA-Factory 0.9.5 requires transformers<=5.6, peft<=0.18.1, trl<=0.24, datasets<=4.0 and
torchvision/torchaudio, so it cannot be installed beside forgetless' stack on the CPU development
machine. It accepts extra callbacks through `run_exp(callbacks=...)`; ForgetlessCallback finds
the trainer LLaMA-Factory builds when its train() starts, so no other change is needed.

    python examples/integrations/llamafactory_run.py my_llamafactory_config.yaml
"""

import sys

import yaml
from llamafactory.train.tuner import run_exp

from forgetless.integrations import ForgetlessCallback

args = yaml.safe_load(open(sys.argv[1]))  # the usual LLaMA-Factory training YAML (eval_steps sets when forgetless scores)
run_exp(args, callbacks=[ForgetlessCallback(
    eval_qa="examples/data/pharma/heldout_qa.jsonl", eval_mc="examples/data/pharma/heldout_mc.jsonl", budget={"general_kl": 0.1}, every=args.get("eval_steps", 50),
)])
