"""The adaptive KL-to-base weight on scripted KL sequences: raises, lowers, bounded, resumes exactly."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.errors import ConfigError, ForgetlessError
from forgetless.train.kl_control import KLController, make_kl_controller


def ctl(**kw: float) -> KLController:
    # budget 0.1 at fraction 0.5: the target is 0.05 (until an evaluation re-aims it).
    args = {"budget": 0.1, "initial_weight": 1.0, "target_fraction": 0.5, "gain": 0.2, "max_error": 0.5, "beta": 0.0, "min_weight": 0.05, "max_weight": 20.0}
    return KLController(**{**args, **kw})


def step(c: KLController, *kls: float, progress: float | None = None) -> float:
    for k in kls:
        c.observe(k)
    c.step(progress)
    return c.weight


def test_drift_above_target_raises_the_weight() -> None:
    c = ctl()
    assert c.target == pytest.approx(0.05)
    # 0.06 / 0.05 - 1 = 0.2: log(weight) moves by 0.2 * 0.2.
    assert step(c, 0.06) == pytest.approx(math.exp(0.04))
    # 0.1 / 0.05 - 1 = 1, clipped to 0.5: at most exp(0.1) per step however far over.
    assert step(c, 0.1) == pytest.approx(math.exp(0.04 + 0.1))
    assert step(c, 5.0) == pytest.approx(math.exp(0.04 + 0.2))


def test_room_under_target_lowers_the_weight_once_the_target_was_reached() -> None:
    c = ctl()
    # Before the drift first reaches the target, a low drift is not room: the weight holds.
    assert step(c, 0.04) == 1.0 and step(c, 0.0) == 1.0
    assert step(c, 0.05) == 1.0 and c.state.reached  # on target: error 0, now reached
    assert step(c, 0.04) == pytest.approx(math.exp(-0.04))  # 0.04 / 0.05 - 1 = -0.2
    assert step(c, 0.0) == pytest.approx(math.exp(-0.04 - 0.1))  # -1 clipped to -0.5


def test_an_evaluation_after_warmup_ends_the_hold() -> None:
    c = ctl(warmup=0.1)
    assert step(c, 0.02, progress=0.05) == 1.0
    c.observe_eval(0.04)  # inside the warmup: the drift may not have started yet, the hold stays
    assert not c.state.reached and step(c, 0.02, progress=0.08) == 1.0
    step(c, 0.02, progress=0.2)
    c.observe_eval(0.04)  # after it: the room is measured; ratio 0.02 / 0.04 re-aims the target to 0.025
    assert c.state.reached and c.target == pytest.approx(0.025)
    assert step(c, 0.02, progress=0.21) == pytest.approx(math.exp(-0.2 * 0.2))  # 0.02 / 0.025 - 1 = -0.2
    # The step-0 evaluation of the base (no drift) ends nothing.
    d = ctl()
    step(d, 0.01, progress=0.5)
    d.observe_eval(0.0)
    assert not d.state.reached and step(d, 0.01) == 1.0


def test_on_target_or_without_replay_rows_nothing_moves() -> None:
    c = ctl()
    # The step's signal is the mean over its micro-batches: (0.04 + 0.06) / 2 is the target.
    assert step(c, 0.04, 0.06) == 1.0
    assert c.state.updates == 1
    assert step(c) == 1.0  # a step without replay rows: no measurement, no correction
    assert c.state.updates == 1


def test_signal_is_smoothed() -> None:
    c = ctl(beta=0.9)
    step(c, 0.1)
    assert c.state.ema == pytest.approx(0.1)  # the first measurement starts the average
    step(c, 0.0)
    assert c.state.ema == pytest.approx(0.09)
    assert c.state.last_signal == 0.0


def test_weight_stays_within_its_bounds() -> None:
    c = ctl(max_weight=2.0, min_weight=0.5)
    ups = [step(c, 1.0) for _ in range(20)]
    assert max(ups) == 2.0 and ups[-1] == 2.0
    assert ups == sorted(ups)  # monotone up to the cap
    downs = [step(c, 0.0) for _ in range(40)]
    assert min(downs) == 0.5 and downs[-1] == 0.5
    # The starting weight is clamped into the bounds too.
    assert ctl(initial_weight=100.0, max_weight=3.0).weight == pytest.approx(3.0)


def test_the_aim_tightens_over_the_run() -> None:
    """Slack 3: the aim is 4x its final value at the start, (1 + 3 x 0.25) = 1.75x halfway, 1x at
    the end; the target (replay units) follows it."""
    c = ctl(slack=3.0, beta=0.0)
    assert c.aim == pytest.approx(0.2) and c.target == pytest.approx(0.2)  # 0.5 x 0.1 x 4
    # Halfway, a drift of 0.08 is under the aim of 0.0875: the weight holds (not reached yet).
    assert step(c, 0.08, progress=0.5) == 1.0 and c.aim == pytest.approx(0.0875)
    # At the end the same drift is 60% over the aim of 0.05: the weight climbs (error clipped at 0.5).
    assert step(c, 0.08, progress=1.0) == pytest.approx(math.exp(0.1)) and c.aim == pytest.approx(0.05)
    # A step without replay rows still moves the aim with the run, but not the weight.
    assert step(c, progress=0.0) == pytest.approx(math.exp(0.1)) and c.aim == pytest.approx(0.2)
    assert c.terms()["kl_control/aim"] == pytest.approx(0.2)
    # Progress is clamped to [0, 1]; without slack the aim never moves.
    c.step(3.0)
    assert c.aim == pytest.approx(0.05)
    flat = ctl()
    assert [step(flat, 0.05, progress=p) for p in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0] and flat.aim == pytest.approx(0.05)
    with pytest.raises(ValueError, match="slack"):
        ctl(slack=-1.0)


def test_evaluation_reaims_the_replay_signal() -> None:
    c = ctl()
    step(c, 0.03)
    # Replay rows drift 0.03 where the general prompts drift 0.06: the replay signal must sit at
    # half the budget's share for the general KL to sit at it.
    c.observe_eval(0.06)
    assert c.state.ratio == pytest.approx(0.5)
    assert c.target == pytest.approx(0.025)
    c.observe_eval(0.0)  # step 0 / a no-op: no ratio to learn
    assert c.state.ratio == pytest.approx(0.5)
    c.observe_eval(0.001)  # ratio 30, clamped
    assert c.state.ratio == 5.0
    assert ctl(calibrate=False).target == pytest.approx(0.05)


def test_terms_name_every_part() -> None:
    c = ctl()
    assert set(c.terms()) == {"kl_control/weight", "kl_control/target", "kl_control/aim", "kl_control/ratio", "kl_control/updates"}
    step(c, 0.06)
    t = c.terms()
    assert t["kl_control/signal"] == 0.06 and t["kl_control/signal_ema"] == 0.06 and t["kl_control/updates"] == 1.0
    assert t["kl_control/weight"] == c.weight


def _scripted(i: int) -> list[float]:
    # Drift that overshoots, then falls away: a mix of micro-batch counts, some steps without replay.
    if i % 7 == 3:
        return []
    return [0.02 + 0.13 * math.sin(0.3 * i) ** 2 + 0.001 * j for j in range(1 + i % 3)]


def test_state_resumes_bit_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    full = ctl(beta=0.9, slack=2.0)
    weights = []
    for i in range(40):
        step(full, *_scripted(i), progress=i / 40)
        if i % 10 == 9:
            full.observe_eval(0.07 + 0.001 * i)
        weights.append(full.weight)

    first = ctl(beta=0.9, slack=2.0)
    for i in range(20):
        step(first, *_scripted(i), progress=i / 40)
        if i % 10 == 9:
            first.observe_eval(0.07 + 0.001 * i)
    first.save(tmp_path)
    assert (tmp_path / A.KL_CONTROL_STATE).exists()
    resumed = ctl(beta=0.9, slack=2.0)
    resumed.load(tmp_path)
    assert resumed.state == first.state and resumed.aim == first.aim
    for i in range(20, 40):
        step(resumed, *_scripted(i), progress=i / 40)
        if i % 10 == 9:
            resumed.observe_eval(0.07 + 0.001 * i)
        assert resumed.weight == weights[i]  # exact, not approx
    assert resumed.state == full.state
    assert len({round(w, 6) for w in weights}) > 10  # the weight really moved along the script


def test_missing_or_foreign_state_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ForgetlessError, match="kl_control.json"):
        ctl().load(tmp_path)
    with pytest.raises(ValueError, match="version"):
        ctl().load_state_dict({"version": 99, "log_weight": 0.0})


def test_config_turns_the_controller_on_only_with_a_budget() -> None:
    with_budget = load_config(None, ["budget.general_kl=0.05"])
    c = make_kl_controller(with_budget.train, with_budget.budget, kl_weight=with_budget.train.kl_to_base)
    # Aimed at 0.8 x the budget at the end of the run, 4x that (slack 3) at its start.
    assert c is not None and c.budget == 0.05 and c.weight == 1.0 and c.slack == 3.0 and c.target == pytest.approx(0.16)
    c.step(1.0)
    assert c.aim == pytest.approx(0.04)
    none = load_config(None)
    assert make_kl_controller(none.train, none.budget, kl_weight=none.train.kl_to_base) is None  # no budget: fixed weight
    fixed = load_config(None, ["budget.general_kl=0.05", "train.kl_control=fixed"])
    assert make_kl_controller(fixed.train, fixed.budget, kl_weight=1.0) is None
    assert make_kl_controller(with_budget.train, with_budget.budget, kl_weight=0.0) is None  # no KL term to steer
    with pytest.raises(ConfigError, match="kl_weight_min"):
        load_config(None, ["train.kl_weight_min=5", "train.kl_weight_max=1"])
    with pytest.raises(ConfigError, match="kl_control"):
        load_config(None, ["train.kl_control=sometimes"])


REPLAY = """\
{"prompt": "what is the capital of france", "response": "paris is the capital of france"}
{"prompt": "what is two plus two", "response": "two plus two is four"}
{"prompt": "hello you are a cat", "response": "hello i am a cat"}
{"prompt": "print hello world in python", "response": "print hello world"}
"""


def test_tiny_run_over_budget_raises_the_weight_until_drift_is_back_under(tiny_run: Path) -> None:
    """A run that starts with a weak KL term breaches its budget; the controller raises the weight
    until the general KL is back under the budget, then lowers it again as room opens up."""
    import json

    from forgetless.pipeline import run_pipeline

    (tiny_run / "replay.jsonl").write_text(REPLAY)
    # A weak start (weight 0.01) and a hot LR: at a fixed weight 0.1 the drift of this run climbs to
    # 0.015-0.017 and stays there (at a start of 0.1 the controller now holds it under the budget
    # throughout). A high gain and ceiling, so 24 tiny steps are enough to see the whole loop; the
    # library's defaults are gentler.
    overrides = [
        "data.replay=replay.jsonl", "eval.general_suites=[]", "train.replay_ratio=0.5", "train.kl_to_base=0.01", "train.lr=0.02",
        "budget.general_kl=0.012", "train.max_steps=24", "train.eval_every=6", "train.patience=100", "train.scale_sweep=[]",
        "train.kl_gain=2", "train.kl_weight_max=1000", "train.kl_target_slack=0",
    ]  # fmt: skip
    cfg = load_config(tiny_run / "cfg.yaml", overrides)
    run_pipeline(cfg)
    hist = [json.loads(l) for l in (cfg.run_dir / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 6, 12, 18, 24]
    kl = [h["general/kl"] for h in hist]
    w = [h.get("kl_control/weight") for h in hist]
    breach = next(i for i, k in enumerate(kl) if k > 0.012)
    assert hist[breach]["budget/outside"] == 1.0
    # Outside the budget the weight climbs (checked at the evaluation after the breach)...
    assert w[breach + 1] > 10 * w[breach]
    # ...and the drift comes back under the budget and stays there.
    assert all(k <= 0.012 for k in kl[breach + 1 :]) and breach + 1 < len(kl), (kl, w)
    assert hist[-1]["budget/outside"] == 0.0
    # Every term is in metrics.jsonl: the weight, its target, the replay signal and its ratio.
    for key in ("kl_control/target", "kl_control/signal_ema", "kl_control/ratio", "train/replay_kl"):
        assert key in hist[-1], key
    # Each checkpoint holds the controller's state, and it is the one recorded at that evaluation.
    saved = json.loads((cfg.run_dir / A.CHECKPOINTS_DIR / "checkpoint-12" / A.KL_CONTROL_STATE).read_text())
    assert math.exp(saved["log_weight"]) == pytest.approx(w[2], rel=1e-12)
    report = (cfg.run_dir / A.REPORT_MD).read_text()
    assert "## KL weight steered by the budget" in report and f"| 12 | {w[2]:.3f} |" in report
    # TensorBoard got the per-step weight too (the Trainer's log history is its source).
    state = json.loads((cfg.run_dir / A.CHECKPOINTS_DIR / "checkpoint-24" / "trainer_state.json").read_text())
    assert len([h for h in state["log_history"] if "kl_control/weight" in h]) == 24
    assert any("reg/kl_to_base" in h for h in state["log_history"])

    # Resumed from checkpoint-12 (as after a kill), the controller steers as the uninterrupted run did.
    cut = tiny_run / "cut"
    shutil.copytree(cfg.run_dir, cut)
    for step in (18, 24):
        shutil.rmtree(cut / A.CHECKPOINTS_DIR / f"checkpoint-{step}")
    run_pipeline(load_config(tiny_run / "cfg.yaml", [*overrides, f"run_dir={cut}"]), resume=True)
    again = [json.loads(l) for l in (cut / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in again] == [0, 6, 12, 18, 24]
    assert "kl_control/weight" not in again[0]  # step 0 is the base, before any step
    for a, b in zip(hist[1:], again[1:]):
        assert b["kl_control/weight"] == pytest.approx(a["kl_control/weight"], rel=1e-6), a["step"]
        assert b["general/kl"] == pytest.approx(a["general/kl"], rel=1e-4), a["step"]


def test_tiny_run_with_room_lowers_the_weight_after_its_first_evaluation(tiny_run: Path) -> None:
    """A run whose drift never reaches its target: the first evaluation after the warmup measures
    the room, and from then on the weight falls (before, it held at its start the whole run)."""
    import json

    from forgetless.pipeline import run_pipeline

    (tiny_run / "replay.jsonl").write_text(REPLAY)
    overrides = [
        "data.replay=replay.jsonl", "eval.general_suites=[]", "train.replay_ratio=0.5", "train.kl_to_base=1",
        "budget.general_kl=10", "train.max_steps=18", "train.eval_every=6", "train.warmup_ratio=0.2", "train.scale_sweep=[]",
        "train.kl_target_slack=0",
    ]  # fmt: skip
    cfg = load_config(tiny_run / "cfg.yaml", overrides)
    run_pipeline(cfg)
    hist = [json.loads(l) for l in (cfg.run_dir / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 6, 12, 18]
    assert all(0 < h["general/kl"] < 1 for h in hist[1:])  # far under the budget's aim of 8 throughout
    w = [h["kl_control/weight"] for h in hist[1:]]
    # Held at 1 up to the first evaluation (step 6, after the 4-step warmup); lowered every step after it.
    assert w[0] == 1.0 and 0.05 <= w[2] < w[1] < 1.0, (w, [(h["general/kl"], h.get("kl_control/signal_ema")) for h in hist])
