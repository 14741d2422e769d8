"""A plain transformers.Trainer script with forgetless added: the lines marked `# forgetless` are the change.

    python examples/integrations/hf_trainer.py [--max-steps 92] [--out runs/hf_trainer]

The user's own tokenization (chat template, loss on every token, right padding) and the user's own
held-out loss evaluation every 46 steps; forgetless scores both of its suites at those same
steps, logs them through report_to, applies the budget and adds the KL-to-base term.
"""

import argparse
from pathlib import Path

from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from forgetless.integrations import ForgetlessCallback, base_replay, forgetless_trainer, mix_replay  # forgetless
from forgetless.models import resolve_model

DATA = Path(__file__).resolve().parents[1] / "data" / "pharma"
p = argparse.ArgumentParser()
p.add_argument("--max-steps", type=int, default=92)
p.add_argument("--eval-every", type=int, default=46)
p.add_argument("--out", default="runs/hf_trainer")
a = p.parse_args()

name = resolve_model("smollm2-135m-instruct")  # the embedded model as a local HF folder; any hub id works
tok = AutoTokenizer.from_pretrained(name)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(name), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
data = load_dataset("json", data_files=str(DATA / "train_qa.jsonl"), split="train").train_test_split(test_size=10, seed=0)
train = mix_replay(data["train"], base_replay(model, tok, n=64), 0.3, tokenizer=tok)  # forgetless: general replay rows


def tokenize(row: dict) -> dict:
    return tok(tok.apply_chat_template(row["messages"], tokenize=False), truncation=True, max_length=256)


train, held = train.map(tokenize, remove_columns=["messages"]), data["test"].map(tokenize, remove_columns=["messages"])
args = TrainingArguments(
    output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=4, learning_rate=2e-3, warmup_steps=0.05, logging_steps=10,
    eval_strategy="steps", eval_steps=a.eval_every, save_steps=a.eval_every, report_to="tensorboard", use_cpu=True,
)
trainer = forgetless_trainer(Trainer)(  # forgetless: Trainer + the KL-to-base loss term
    model=model, args=args, train_dataset=train, eval_dataset=held, processing_class=tok, kl_to_base=1.0,  # forgetless: its weight
    data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    callbacks=[ForgetlessCallback(eval_qa=DATA / "heldout_qa.jsonl", eval_mc=DATA / "heldout_mc.jsonl", budget={"general_kl": 0.1},  # forgetless
                                  eval={"batch_size": 64, "general_max_new_tokens": 24, "general_limit": 65, "qa_max_new_tokens": 20})],
)
trainer.train()
print((Path(a.out) / "summary.json").read_text())
