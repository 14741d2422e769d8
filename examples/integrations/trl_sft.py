"""A TRL SFTTrainer script with forgetless added: the lines marked `# forgetless` are the change.

    python examples/integrations/trl_sft.py [--max-steps 92] [--out runs/trl_sft]

Teaches SmolLM2-135M-Instruct the sample pharmacology Q&A (examples/data/pharma) with LoRA, and
scores both suites (held-out domain QA/MC; drift from the base on general prompts) every 46
steps, with replay + KL-to-base holding the drift and a forgetting budget that stops training if
it is breached. Writes metrics.jsonl, curves.png, summary.json and report.md into --out.
"""

import argparse
from pathlib import Path

from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from forgetless.integrations import ForgetlessCallback, base_replay, forgetless_trainer, mix_replay  # forgetless
from forgetless.models import resolve_model

DATA = Path(__file__).resolve().parents[1] / "data" / "pharma"
p = argparse.ArgumentParser()
p.add_argument("--max-steps", type=int, default=92)
p.add_argument("--eval-every", type=int, default=46)
p.add_argument("--out", default="runs/trl_sft")
a = p.parse_args()

name = resolve_model("smollm2-135m-instruct")  # the embedded model as a local HF folder; any hub id works
tok = AutoTokenizer.from_pretrained(name)
model = AutoModelForCausalLM.from_pretrained(name)
train = load_dataset("json", data_files=str(DATA / "train_qa.jsonl"), split="train")
# forgetless: general replay rows; 64 of the 200 prompts cover a 0.3 share of these 70 short answers
train = mix_replay(train, base_replay(model, tok, n=64), 0.3, tokenizer=tok)

args = SFTConfig(
    output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=4, learning_rate=2e-3, warmup_steps=0.05,
    logging_steps=10, save_steps=a.eval_every, report_to="tensorboard", max_length=256, use_cpu=True,
)
trainer = forgetless_trainer(SFTTrainer)(  # forgetless: SFTTrainer + the KL-to-base loss term
    model=model, args=args, train_dataset=train, processing_class=tok, kl_to_base=1.0,  # forgetless: its weight
    peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    callbacks=[ForgetlessCallback(  # forgetless: both suites, the budget and the run files
        eval_qa=DATA / "heldout_qa.jsonl", eval_mc=DATA / "heldout_mc.jsonl", budget={"general_kl": 0.1}, every=a.eval_every,
        eval={"batch_size": 64, "general_max_new_tokens": 24, "general_limit": 65, "qa_max_new_tokens": 20})],
)
trainer.train()
print((Path(a.out) / "summary.json").read_text())
