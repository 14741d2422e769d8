"""forgetless inside a user's own trainer: the real transformers.Trainer and TRL SFTTrainer on the
tiny model, with ForgetlessCallback and the KL-to-base term."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import Trainer, TrainingArguments, set_seed
from trl import SFTConfig, SFTTrainer  # the dev extra pins it: these tests are about TRL's real trainer

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.data import load_examples
from forgetless.integrations import ForgetlessCallback, forgetless_trainer, mix_replay
from forgetless.models import load_model, load_tokenizer
from forgetless.pipeline import run_pipeline
from forgetless.train.adapters import attach_adapter
from forgetless.train.dataset import PackedCollator, build_dataset
from forgetless.train.kl_control import make_kl_controller


REPLAY = [
    {"messages": [{"role": "user", "content": "what is the capital of france"}, {"role": "assistant", "content": "paris is the capital of france"}]},
    {"messages": [{"role": "user", "content": "what is two plus two"}, {"role": "assistant", "content": "two plus two equals four"}]},
    {"messages": [{"role": "user", "content": "print hello world in python"}, {"role": "assistant", "content": "print hello world"}]},
    {"messages": [{"role": "user", "content": "hello you are a cat"}, {"role": "assistant", "content": "yes a red cat"}]},
]
DOMAIN = [
    {"messages": [{"role": "user", "content": "what does zorvanex treat"}, {"role": "assistant", "content": "marrowick syndrome"}]},
    {"messages": [{"role": "user", "content": "who made zorvanex"}, {"role": "assistant", "content": "acme"}]},
    {"messages": [{"role": "user", "content": "what is the dose of zorvanex"}, {"role": "assistant", "content": "ten mg"}]},
    {"messages": [{"role": "user", "content": "what is a side effect of zorvanex"}, {"role": "assistant", "content": "blue vision"}]},
]
# fp32 everywhere: the comparisons below are of arithmetic, not of bf16 rounding.
EVAL = {"general_max_new_tokens": 6, "qa_max_new_tokens": 4, "general_suites": ["knowledge_mc"], "suite_limits": {"knowledge_mc": 4}, "precision": "fp32"}


def _eval(tiny_run: Path) -> dict:
    return {**EVAL, "general_prompts": str(tiny_run / "general.jsonl")}


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


def _sft(tiny_run: Path, tiny_model_dir: Path, out: Path, *, steps: int, callback_kw: dict, kl: float = 1.0):  # noqa: ANN202
    """TRL's SFTTrainer as a user sets it up, plus the forgetless lines."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    train = mix_replay(Dataset.from_list(DOMAIN), Dataset.from_list(REPLAY), 0.5, tokenizer=tok, seed=0)
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=2, learning_rate=0.01, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, max_length=32, packing=False, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = forgetless_trainer(SFTTrainer)(
        model=model, args=args, train_dataset=train, processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"), kl_to_base=kl,
    )  # fmt: skip
    trainer.add_callback(ForgetlessCallback(run_dir=out, eval_qa=tiny_run / "qa.jsonl", eval_mc=tiny_run / "mc.jsonl", eval=_eval(tiny_run), **callback_kw))
    return trainer, tok


def test_sft_trainer_logs_both_suites_and_writes_the_run_files(tiny_run: Path, tiny_model_dir: Path) -> None:
    out = tiny_run / "sft"
    trainer, _ = _sft(tiny_run, tiny_model_dir, out, steps=4, callback_kw={"every": 2, "budget": {"general_kl": 10.0}})
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_general/kl" in h]
    assert [h["step"] for h in evals] == [0, 2, 4]
    assert evals[0]["eval_general/kl"] == pytest.approx(0.0, abs=1e-6)  # step 0 is the base
    assert all(h["eval_general/kl"] > 0 for h in evals[1:])
    for key in ("eval_domain/qa_f1", "eval_domain/mc_acc", "eval_general/knowledge_mc", "eval_budget/outside"):
        assert key in evals[-1], key
    # The KL term ran on replay rows and is logged beside the loss.
    assert any(h.get("reg/kl_to_base", 0) > 0 for h in trainer.state.log_history)
    lines = _lines(out / A.METRICS)
    assert [h["step"] for h in lines] == [0, 2, 4]
    for h, e in zip(lines, evals):
        assert h["general/kl"] == pytest.approx(e["eval_general/kl"])
    # forgetless.budget.judge's verdict on every line, the base's included.
    assert [(h["budget/state"], h["budget/outside"], h["budget/violations"]) for h in lines] == [("inside", 0.0, [])] * 3
    summary = json.loads((out / A.SUMMARY).read_text())
    assert summary["selected"]["step"] in (2, 4) and "inside the budget" in summary["verdict"]
    assert (out / A.CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / A.REPORT_MD).exists()


def test_breached_budget_stops_sft_training(tiny_run: Path, tiny_model_dir: Path) -> None:
    out = tiny_run / "stop"
    # Any drift breaks a 1e-9 budget; patience 1 stops at the first evaluation after step 0.
    trainer, _ = _sft(tiny_run, tiny_model_dir, out, steps=8, callback_kw={"every": 2, "budget": {"general_kl": 1e-9}, "patience": 1})
    trainer.train()
    assert trainer.state.global_step == 2
    assert [h["step"] for h in _lines(out / A.METRICS)] == [0, 2]
    summary = json.loads((out / A.SUMMARY).read_text())
    assert summary["early_stop_step"] == 2 and summary["selected"] is None
    assert "base model is kept" in summary["verdict"]


def test_kl_term_changes_the_sft_loss_as_hand_computed(tiny_run: Path, tiny_model_dir: Path) -> None:
    trainer, _ = _sft(tiny_run, tiny_model_dir, tiny_run / "kl", steps=1, callback_kw={}, kl=2.0)
    model = trainer.model
    with torch.no_grad():  # a non-zero adapter, so the tuned model differs from its base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    ds = trainer.train_dataset
    rows = [ds[i] for i in range(len(ds))]
    batch = trainer.data_collator([next(r for r in rows if not r["replay"]), next(r for r in rows if r["replay"])])
    assert batch["replay"].tolist() == [False, True]
    loss = trainer.compute_loss(model, dict(batch))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # By hand: mean cross-entropy on the domain row's labelled tokens ...
    logits = model(input_ids=ids, attention_mask=mask).logits
    lab = batch["labels"][0, 1:]
    keep = lab != -100
    ce = torch.nn.functional.cross_entropy(logits[0, :-1][keep], lab[keep])
    # ... plus 2 x the mean over the replay row's labelled next tokens of sum_v p_base (log p_base - log p_tuned).
    with model.disable_adapter():
        base = model(input_ids=ids[1:], attention_mask=mask[1:]).logits[0, :-1]
    tuned = logits[1, :-1]
    pos = batch["kl_labels"][1, 1:] != -100
    lp, lq = base.log_softmax(-1)[pos], tuned.log_softmax(-1)[pos]
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    assert float(kl) > 1e-3
    assert loss.item() == pytest.approx(ce.item() + 2.0 * kl.item(), rel=1e-4)
    # Without the term the loss is the plain cross-entropy: the term is what changed it.
    trainer.regularizers = None
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(ce.item(), rel=1e-4)


COMMON = [
    "train.precision=fp32", "eval.precision=fp32", "train.scale_sweep=[]", "train.replay_ratio=0.3", "train.kl_to_base=1.0",
    "train.max_steps=6", "train.eval_every=3", "budget.general_kl=5.0",
]  # fmt: skip


def _replay_file(tiny_run: Path) -> Path:
    path = tiny_run / "replay.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in REPLAY))
    return path


def _user_trainer(cfg, tiny_run: Path, out: Path, trainer_cls: type):  # noqa: ANN001, ANN202
    """The same data and settings as the pipeline, through a user's own trainer class."""
    set_seed(cfg.seed)
    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name)
    ds = build_dataset(tok, load_examples(cfg.data.train), max_length=cfg.data.max_length, replay=load_examples([cfg.data.replay]), replay_ratio=cfg.train.replay_ratio, seed=cfg.seed)
    model = attach_adapter(model, cfg.lora)
    t = cfg.train
    common = dict(
        output_dir=str(out), per_device_train_batch_size=t.batch_size, learning_rate=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        warmup_steps=t.warmup_ratio, lr_scheduler_type=t.lr_scheduler, max_steps=t.max_steps, logging_steps=1, save_strategy="no",
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    if trainer_cls is Trainer:
        args, extra = TrainingArguments(**common), {}
    else:
        # Already tokenized and packed rows: TRL skips its own preparation; max_length covers every row.
        # SFTConfig turns bf16 on by default; the pipeline here trains in fp32.
        args, extra = SFTConfig(**common, max_length=None, bf16=False), {}
        ds = Dataset.from_list([ds[i] for i in range(len(ds))])
    fl = ForgetlessCallback(
        run_dir=out, eval_qa=cfg.data.eval_qa, eval_mc=cfg.data.eval_mc, eval={**cfg.eval.model_dump()}, budget=cfg.budget, every=t.eval_every, patience=t.patience,
    )  # fmt: skip
    trainer = forgetless_trainer(trainer_cls)(
        model=model, args=args, train_dataset=ds, processing_class=tok, data_collator=PackedCollator(pad_id=tok.pad_token_id, replay_kl_only=True),
        # The pipeline steers the KL weight towards the budget (train.kl_control: auto): so does the mixin.
        callbacks=[fl], kl_to_base=t.kl_to_base, kl_controller=make_kl_controller(t, cfg.budget, kl_weight=t.kl_to_base), **extra,
    )  # fmt: skip
    return trainer


@pytest.mark.parametrize("kind", ["trainer", "sft"])
def test_same_metrics_as_forgetless_run(tiny_run: Path, kind: str) -> None:
    replay = _replay_file(tiny_run)
    cfg = load_config(tiny_run / "cfg.yaml", [*COMMON, f"data.replay={replay}", f"run_dir={tiny_run / 'pipe'}"])
    run_pipeline(cfg)
    pipe = _lines(cfg.run_dir / A.METRICS)
    trainer = _user_trainer(cfg, tiny_run, tiny_run / kind, Trainer if kind == "trainer" else SFTTrainer)
    trainer.train()
    user = _lines(tiny_run / kind / A.METRICS)
    assert [h["step"] for h in user] == [h["step"] for h in pipe] == [0, 3, 6]
    # Measured: the Trainer is bit-identical to the pipeline; SFTTrainer (its fused LM head sums in
    # another order) within 4.8e-7 absolute on a per-category KL of ~1e-3, and 1.1e-4 relative on
    # the controller's target (the ratio of two drifts, each carrying that noise).
    rel = 1e-4 if kind == "trainer" else 5e-4
    for hp, hu in zip(pipe, user):
        for k, v in hp.items():
            if isinstance(v, float) and not k.startswith("time/") and math.isfinite(v):
                assert hu[k] == pytest.approx(v, rel=rel, abs=1e-5), (hp["step"], k)
        assert (hu["budget/state"], hu["budget/outside"], hu["budget/violations"]) == (hp["budget/state"], hp["budget/outside"], hp["budget/violations"])
    assert any(h.get("reg/kl_to_base", 0) > 0 for h in trainer.state.log_history)
    # The steered weight and the replay KL are on both runs' evaluation lines (compared above).
    assert all("kl_control/weight" in h and "train/replay_kl" in h for h in user[1:])
    logged = [h for h in trainer.state.log_history if "eval_general/kl" in h]
    assert [(h["step"], h["eval_general/kl"]) for h in logged] == [(h["step"], h["general/kl"]) for h in user]


def test_mix_replay_ratio_by_rows_and_tokens(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    domain = Dataset.from_list([{"text": "zorvanex treats marrowick syndrome"}] * 6)  # 4 tokens each: 24
    replay = Dataset.from_list([{"text": "hello world"}, {"text": "the capital of france is paris"}])  # 2 and 6 tokens
    by_rows = mix_replay(domain, replay, 0.25)  # 6 domain rows -> 2 replay rows (2 / 8)
    assert by_rows["replay"] == [False] * 6 + [True] * 2
    by_tokens = mix_replay(domain, replay, 0.25, tokenizer=tok, seed=0)  # target 24 / 3 = 8 replay tokens
    drawn = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in by_tokens if r["replay"]]
    assert sum(drawn) >= 8 and sum(drawn) - drawn[-1] < 8  # stops at the first draw that reaches the target
    with pytest.raises(ValueError, match="columns"):
        mix_replay(domain, Dataset.from_list(REPLAY), 0.3)


def test_callback_finds_the_trainer_that_runs_it(tiny_run: Path, tiny_model_dir: Path) -> None:
    """A trainer built elsewhere (as LLaMA-Factory's run_exp(callbacks=...) does) is found when its
    train() starts; outside any trainer, the callback says how to bind it."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = attach_adapter(load_model(str(tiny_model_dir)), load_config(tiny_run / "cfg.yaml").lora)
    args = TrainingArguments(output_dir=str(tiny_run / "x"), max_steps=1, report_to="none", use_cpu=True, save_strategy="no", remove_unused_columns=False)
    ds = build_dataset(tok, load_examples([tiny_run / "train.jsonl"]), max_length=32)
    fl = ForgetlessCallback(eval_qa=tiny_run / "qa.jsonl", eval={**_eval(tiny_run), "general_suites": []}, every=1)
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok, data_collator=PackedCollator(0), callbacks=[fl])
    trainer.train()
    assert fl.trainer is trainer
    assert [h["step"] for h in trainer.state.log_history if "eval_general/kl" in h] == [0, 1]
    with pytest.raises(ValueError, match="bind"):
        ForgetlessCallback().on_train_begin(args, trainer.state, trainer.control, model=model)


def test_forgetting_controls_added_to_a_built_trainer(tiny_run: Path, tiny_model_dir: Path) -> None:
    """add_forgetting_controls (an Axolotl plugin's post_trainer_create): loss = LM loss + w * L2-SP."""
    from forgetless.integrations import add_forgetting_controls
    from forgetless.train.regularizers import lora_l2, lora_layers

    tok = load_tokenizer(str(tiny_model_dir))
    model = attach_adapter(load_model(str(tiny_model_dir)), load_config(tiny_run / "cfg.yaml").lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ds = build_dataset(tok, load_examples([tiny_run / "train.jsonl"]), max_length=32)
    args = TrainingArguments(output_dir=str(tiny_run / "y"), max_steps=1, report_to="none", use_cpu=True, remove_unused_columns=False)
    trainer = add_forgetting_controls(Trainer(model=model, args=args, train_dataset=ds, data_collator=PackedCollator(0)), l2sp=3.0)
    batch = PackedCollator(0)([ds[0]])
    plain = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
    l2 = lora_l2(lora_layers(model))
    assert float(l2) > 0
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(plain.item() + 3.0 * l2.item(), rel=1e-5)


def test_plain_trainer_evaluation_steps_reach_its_tensorboard(tiny_run: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No mixin: a plain Trainer with its own eval set and eval schedule; the callback scores both
    suites at those steps, logs through report_to=tensorboard and stops on a breached budget."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tok = load_tokenizer(str(tiny_model_dir))
    model = attach_adapter(load_model(str(tiny_model_dir)), load_config(tiny_run / "cfg.yaml").lora)
    ds = build_dataset(tok, load_examples([tiny_run / "train.jsonl"]), max_length=32)
    out = tiny_run / "plain"
    args = TrainingArguments(
        output_dir=str(out), max_steps=6, per_device_train_batch_size=2, learning_rate=0.05, eval_strategy="steps", eval_steps=2,
        logging_steps=1, save_strategy="no", report_to="tensorboard", use_cpu=True, remove_unused_columns=False,
    )  # fmt: skip
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(out / "tb"))
    trainer = Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, processing_class=tok, data_collator=PackedCollator(0))
    # Patience 1: the first evaluation outside a 1e-9 budget stops training. (With patience 2 the
    # tiny model's drift sometimes falls 10% between evaluations, which does not count.)
    trainer.add_callback(ForgetlessCallback(trainer, eval_qa=tiny_run / "qa.jsonl", eval=_eval(tiny_run), budget={"general_kl": 1e-9}, patience=1))
    trainer.train()
    assert trainer.state.global_step == 2
    ours = [h for h in trainer.state.log_history if "eval_general/kl" in h]
    assert [h["step"] for h in ours] == [0, 2] and [h["eval_budget/outside"] for h in ours] == [0.0, 1.0]
    assert [h["step"] for h in trainer.state.log_history if "eval_loss" in h] == [2]  # the trainer's own evaluation still runs
    assert [h["step"] for h in _lines(out / A.METRICS)] == [0, 2]
    acc = EventAccumulator(str(out / "tb")).Reload()
    kl = acc.Scalars("eval/general/kl")  # the Trainer's loggers file eval_<name> under eval/<name>
    assert [e.step for e in kl] == [0, 2] and kl[1].value == pytest.approx(ours[1]["eval_general/kl"])
    assert json.loads((out / A.SUMMARY).read_text())["early_stop_step"] == 2


def test_kl_without_replay_rows_is_refused_at_train_start(tiny_run: Path, tiny_model_dir: Path) -> None:
    """TRL's packing keeps only input_ids and labels: the replay column would vanish silently."""
    tok = load_tokenizer(str(tiny_model_dir))
    train = mix_replay(Dataset.from_list(DOMAIN), Dataset.from_list(REPLAY), 0.5)
    args = SFTConfig(output_dir=str(tiny_run / "p"), max_steps=1, report_to="none", use_cpu=True, max_length=32, packing=True, bf16=False)
    trainer = forgetless_trainer(SFTTrainer)(
        model=load_model(str(tiny_model_dir)), args=args, train_dataset=train, processing_class=tok, kl_to_base=1.0,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="no 'replay' column"):
        trainer.train()


def test_evaluation_bypasses_the_trainers_mixed_precision_forward(tiny_model_dir: Path) -> None:
    """accelerate keeps the model's forward as _original_forward and installs an autocast one;
    evaluation runs on the original (at eval.precision) and leaves the trainer's in place after."""
    from forgetless.integrations.callback import own_precision

    model = load_model(str(tiny_model_dir))
    ids = torch.tensor([[5, 6, 7]])
    expected = model(input_ids=ids).logits
    calls = []

    def mixed(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model._original_forward(*a, **k)

    model._original_forward = model.forward
    model.forward = mixed
    with own_precision(model):
        got = model(input_ids=ids).logits
    assert not calls and torch.equal(got, expected)  # fp32, not the trainer's bf16
    model(input_ids=ids)
    assert calls == [1]  # the trainer's forward is back
