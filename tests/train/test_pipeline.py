"""The whole pipeline on a tiny model: files written, parameters touched, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.models import load_model
from forgetless.pipeline import run_pipeline
from forgetless.train.callbacks import EvalScheduleCallback

# The exact files a LoRA run writes at its top level (litgpt-style: a new file is a conscious change).
RUN_FILES = {A.RESOLVED_CONFIG, A.RUN_INFO, A.METRICS, A.CHECKPOINTS_DIR, A.TENSORBOARD_DIR, A.CURVES_PNG, A.REPORT_MD, A.SUMMARY, A.ADAPTER_DIR, A.SCALE_CURVE, A.ROUTER, A.ROUTER_INFO, A.REPORT_HTML, A.SERVED_JSON}
CHECKPOINT_FILES = {
    A.CHECKPOINT_COMPLETE, "README.md", "adapter_config.json", "adapter_model.safetensors",
    "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json", "training_args.bin",
}  # fmt: skip


def test_tiny_run_end_to_end(tiny_run: Path, tiny_model_dir: Path) -> None:
    cfg = load_config(tiny_run / "cfg.yaml")
    summary = run_pipeline(cfg)
    run = cfg.run_dir
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert sorted(p.name for p in (run / A.CHECKPOINTS_DIR).iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert {p.name for p in (run / A.CHECKPOINTS_DIR / "checkpoint-3").iterdir()} == CHECKPOINT_FILES
    assert {p.name for p in (run / A.ADAPTER_DIR).iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}

    history = [json.loads(l) for l in (run / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 3, 6]
    # Step 0 is the base itself: a fresh LoRA is an exact no-op, so KL is 0.
    assert history[0]["general/kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(h["general/kl"] > 0 for h in history[1:])
    for key in ("general/kl/knowledge", "general/kl/math", "general/nll", "domain/mc_acc", "domain/qa_f1", "domain/qa_em", "domain/ppl", "domain/mc_acc/doc_only"):
        assert key in history[0], key

    info = json.loads((run / A.RUN_INFO).read_text())
    assert set(info["hashes"]) == {"base_weights", "tokenizer", "data", "config"}
    assert len(info["hashes"]["base_weights"]) == 64 and len(info["hashes"]["data"]) == 3
    assert summary["selected"]["step"] in (3, 6)
    assert (run / A.CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / A.REPORT_MD).read_text()
    assert "general/kl" in report and "Change against the base" in report

    # The exported adapter is the standard PEFT layout: vanilla PeftModel loads it.
    base = load_model(str(tiny_model_dir))
    peft_model = PeftModel.from_pretrained(base, str(run / A.ADAPTER_DIR))
    saved = load_file(str(run / A.CHECKPOINTS_DIR / f"checkpoint-{summary['selected']['step']}" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)
    assert peft_model is not None


def test_refuses_to_overwrite_a_run(tiny_run: Path) -> None:
    from forgetless.errors import ForgetlessError

    cfg = load_config(tiny_run / "cfg.yaml", ["train.max_steps=1", "train.eval_every=1"])
    run_pipeline(cfg)
    with pytest.raises(ForgetlessError, match="--resume"):
        run_pipeline(load_config(tiny_run / "cfg.yaml"))


def test_only_lora_parameters_change(tiny_run: Path) -> None:
    """Train through the pipeline's own trainer; snapshot every parameter before and after."""
    from forgetless.data import load_examples
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import build_reference, load_general_prompts
    from forgetless.evaluate.runner import Evaluator
    from forgetless.models import load_tokenizer
    from forgetless.train.build import build_trainer
    from forgetless.train.adapters import attach_adapter
    from forgetless.train.callbacks import MetricsRecorder
    from forgetless.train.dataset import build_dataset

    cfg = load_config(tiny_run / "cfg.yaml", ["train.max_steps=3", "train.eval_every=3"])
    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name)
    ds = build_dataset(tok, load_examples(cfg.data.train), max_length=32)
    ref = build_reference(model, tok, load_general_prompts(str(tiny_run / "general.jsonl")), max_new_tokens=4, topk=8)
    model = attach_adapter(model, cfg.lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = MetricsRecorder(cfg.run_dir / A.METRICS, cfg.run_dir / A.TENSORBOARD_DIR)
    trainer = build_trainer(cfg, model, tok, ds, Evaluator(tok, DomainData(), ref), rec, total_steps=3, every=3, device="cpu")
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert changed, "training changed nothing"
    assert changed <= lora, f"non-adapter parameters changed: {sorted(changed - lora)[:5]}"
    # Every adapter B matrix moved off its zero init (every target module learned something).
    assert {n for n in lora if "lora_B" in n} <= changed


class _Crash(Exception):
    pass


def test_resume_matches_uninterrupted(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'full'}"])
    run_pipeline(full)

    # Crash right after step 4 (checkpoint-3 is complete, step 4's work is lost).
    original = EvalScheduleCallback.on_step_end

    def crash_at_4(self, args, state, control, **kw):  # noqa: ANN001, ANN202
        if state.global_step == 4:
            raise _Crash
        return original(self, args, state, control, **kw)

    cut = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'cut'}"])
    monkeypatch.setattr(EvalScheduleCallback, "on_step_end", crash_at_4)
    with pytest.raises(_Crash):
        run_pipeline(cut)
    monkeypatch.setattr(EvalScheduleCallback, "on_step_end", original)
    run_pipeline(cut, resume=True)

    a = [json.loads(l) for l in (full.run_dir / A.METRICS).read_text().splitlines()]
    b = [json.loads(l) for l in (cut.run_dir / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in b] == [0, 3, 6]
    for ha, hb in zip(a, b):
        for k, v in ha.items():
            if isinstance(v, float) and not k.startswith("time/"):
                assert hb[k] == pytest.approx(v, abs=1e-5), (ha["step"], k)
    wa = load_file(str(full.run_dir / A.CHECKPOINTS_DIR / "checkpoint-6" / "adapter_model.safetensors"))
    wb = load_file(str(cut.run_dir / A.CHECKPOINTS_DIR / "checkpoint-6" / "adapter_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)


def test_curate_stage_feeds_training(tiny_run: Path) -> None:
    """With curate on, training reads curated.jsonl, and every input record is kept or rejected."""
    dup = (tiny_run / "train.jsonl").read_text().splitlines()[0]
    with open(tiny_run / "train.jsonl", "a") as f:
        f.write(dup + "\n")  # an exact duplicate curate must drop
    cfg = load_config(tiny_run / "cfg.yaml", ["curate.enabled=true", "curate.replay=none", "curate.min_words=0", "train.max_steps=2", "train.eval_every=2", "train.scale_sweep=[]"])
    run_pipeline(cfg)
    cur = cfg.run_dir / A.CURATE_DIR
    assert {p.name for p in cur.iterdir()} >= {A.CURATED, A.CURATE_REJECTS, A.CURATE_REPORT_JSON, A.CURATE_REPORT_MD}
    report = json.loads((cur / A.CURATE_REPORT_JSON).read_text())
    c = report["counts"]
    assert c["records_in"] == 7 and c["kept"] + c["rejected"] == 7 and c["rejected_by_reason"]["exact_duplicate"] == 1
    info = json.loads((cfg.run_dir / A.RUN_INFO).read_text())
    assert info["dataset"]["examples"] == c["kept"]


def test_doc_pairs_feed_training(tiny_run: Path) -> None:
    """With data.doc_pairs on, a document's opening + sentence pairs join the training examples."""
    with open(tiny_run / "train.jsonl", "a") as f:
        # Opening "zorvanex is a drug made by acme." (7 words), then two later sentences: 2 pairs.
        f.write('{"text": "zorvanex is a drug made by acme. it treats marrowick syndrome. the dose is ten mg."}\n')
    counts = {}
    for on in (False, True):
        cfg = load_config(tiny_run / "cfg.yaml", [f"data.doc_pairs={str(on).lower()}", f"run_dir={tiny_run / f'run-{on}'}", "train.max_steps=1", "train.eval_every=1", "train.scale_sweep=[]"])
        run_pipeline(cfg)
        counts[on] = json.loads((cfg.run_dir / A.RUN_INFO).read_text())["dataset"]["examples"]
    assert counts == {False: 7, True: 9}



def test_replay_rotate_sizes_the_epoch_by_its_own_rows(tiny_run: Path) -> None:
    """train.replay_rotate keeps the whole replay pool, trains one draw's worth of it an epoch, and
    plans the run's steps from an epoch's rows; run_info says both."""
    words = "zorvanex acme drug made by what is a".split()
    (tiny_run / "replay.jsonl").write_text("".join(f'{{"text": "{a} {b}"}}\n' for a in words for b in words))  # 64 rows
    infos = {}
    for on in (False, True):
        cfg = load_config(tiny_run / "cfg.yaml", [f"train.replay_rotate={str(on).lower()}", f"data.replay={tiny_run / 'replay.jsonl'}", "train.replay_ratio=0.3", f"run_dir={tiny_run / f'rot-{on}'}", "train.max_steps=1", "train.eval_every=1", "train.scale_sweep=[]"])
        run_pipeline(cfg)
        infos[on] = json.loads((cfg.run_dir / A.RUN_INFO).read_text())["dataset"]
    off, on = infos[False], infos[True]
    assert off["replay_pool_rows"] == off["replay_rows"] > 0
    assert on["replay_pool_rows"] > on["replay_rows"] == off["replay_rows"]
    assert on["rows"] == off["rows"] and on["tokens_per_epoch"] > 0

def test_breached_budget_stops_early_through_the_real_trainer(tiny_run: Path) -> None:
    """A budget the tiny model breaks at once (lr 0.01 moves it far from the base): the verdict is
    recorded on every evaluation, the real Trainer stops after ``patience`` of them in a row, and
    nothing outside the budget is exported."""
    cfg = load_config(tiny_run / "cfg.yaml", ["budget.general_kl=1e-6", "train.patience=2", "train.max_steps=12", "train.eval_every=2"])
    summary = run_pipeline(cfg)
    history = [json.loads(l) for l in (cfg.run_dir / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 4]  # stopped at step 4 of 12: two evaluations outside
    assert history[0]["budget/state"] == "inside"
    assert [h["budget/state"] for h in history[1:]] == ["outside", "outside"]
    assert history[1]["budget/violations"][0]["kind"] == "general_kl"
    assert summary["early_stop_step"] == 4
    assert summary["selected"] is None and "base model is kept" in summary["verdict"]
    assert not (cfg.run_dir / A.ADAPTER_DIR).exists()


def test_no_budget_is_reported_as_such(tiny_run: Path) -> None:
    cfg = load_config(tiny_run / "cfg.yaml", ["train.scale_sweep=[]"])
    summary = run_pipeline(cfg)
    assert "no budget set (general KL" in summary["verdict"] and "inside the budget" not in summary["verdict"]
    assert "inside the budget" not in (cfg.run_dir / A.REPORT_MD).read_text()
    history = [json.loads(l) for l in (cfg.run_dir / A.METRICS).read_text().splitlines()]
    assert {h["budget/state"] for h in history} == {"unset"}


def test_scale_is_aimed_at_the_budget(tiny_run: Path, tmp_path: Path) -> None:
    """With a budget under the drift the training reaches, the scale search evaluates each candidate
    at the scale predicted from its own KL at scale 1, and exports a point inside the budget."""
    from forgetless.train.calibrate import aimed_scale

    free = load_config(tiny_run / "cfg.yaml", ["train.scale_sweep=[]", f"run_dir={tmp_path / 'free'}"])
    run_pipeline(free)
    free_kl = [json.loads(l)["general/kl"] for l in (free.run_dir / A.METRICS).read_text().splitlines()][1:]
    budget = 0.5 * min(free_kl)  # every trained checkpoint is outside it
    cfg = load_config(tiny_run / "cfg.yaml", [f"budget.general_kl={budget}", "train.patience=10", "train.scale_sweep=[0.25,0.5,0.75]"])
    summary = run_pipeline(cfg)
    history = [json.loads(l) for l in (cfg.run_dir / A.METRICS).read_text().splitlines()]
    assert [h["general/kl"] for h in history[1:]] == pytest.approx(free_kl)  # the budget did not change training here
    curve = json.loads((cfg.run_dir / A.SCALE_CURVE).read_text())
    tried = [c for c in curve if c["scale"] != 1.0]
    assert 1 <= len(tried) <= 3  # at most len(scale_sweep) evaluations
    first = tried[0]
    kl1 = next(h["general/kl"] for h in history if h["step"] == first["step"])
    assert first["scale"] == round(aimed_scale(kl1, 0.9 * budget), 3)
    inside = [c for c in tried if not c["budget/outside"]]
    assert inside, "no aimed point landed inside the budget"
    sel = summary["selected"]
    assert sel["scale"] < 1.0 and sel["metrics"]["general/kl"] <= budget
