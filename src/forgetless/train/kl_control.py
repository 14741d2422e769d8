"""The forgetting budget as a constraint during training: an adaptive KL-to-base weight.

A fixed KL weight either holds the model far inside the budget (and learns slowly) or lets the
drift run over it while the domain is still unlearned; the budget then only filters checkpoints
after the fact. :class:`KLController` instead steers the weight so the measured drift sits at a
target just under the budget, as PPO's adaptive KL controller does for a KL target:

- every optimizer step it reads the KL on that step's replay rows (a free by-product of the KL
  term), smooths it with an exponential moving average, and moves ``log(weight)`` by
  ``gain * clip(ema / target - 1)``: up while the drift runs above the target, down while there
  is room, but never down before the drift has first reached the target (the low drift of an
  untrained adapter is not room) or an evaluation after the LR warmup has measured the drift on
  the general prompts (then the room is measured, not assumed). In log space, so the weight stays
  positive and a factor of 2 costs the same either way.
- the per-step signal is measured on replay rows, the budget on general prompts at evaluation.
  At each evaluation the controller records their ratio and aims the replay signal at the value
  that corresponds to the budget's KL on the general prompts (``calibrate``).
- the aim tightens over the run (``slack``): early on, while the LR is high and the domain loss
  large, the drift runs ahead of any KL weight and falls back on its own as the domain is learned
  and the LR decays; the budget binds the checkpoints that can be selected, which come late. So the
  controller aims at ``target_fraction * budget * (1 + slack * (1 - progress)**2)``: up to
  ``1 + slack`` times the final aim at the start, the final aim at the end of the run.

The whole state is a handful of floats, saved with every checkpoint and restored on resume, so a
resumed run steers exactly as the uninterrupted one did.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import KL_CONTROL_STATE
from ..errors import ForgetlessError
from ..budget import BudgetConfig
from ..io import atomic_write_text
from .config import TrainConfig

STATE_VERSION = 1


@dataclass
class KLControlState:
    """Everything the controller carries from one step to the next (checkpointed as JSON)."""

    log_weight: float
    ema: float | None = None  # smoothed replay KL; None before the first replay row
    ratio: float = 1.0  # replay KL / general KL at the last evaluation that could measure it
    updates: int = 0  # optimizer steps that had replay rows
    last_signal: float | None = None  # the last step's replay KL (mean over its micro-batches)
    reached: bool = False  # lowering allowed: the signal reached the target, or an evaluation after warmup measured the drift
    progress: float = 0.0  # share of the run's optimizer steps done at the last step


@dataclass
class KLController:
    """Adaptive weight for the KL-to-base term, steered towards ``target_fraction * budget``.

    ``budget``: the general-KL budget (nats/token on the general prompts). ``gain``: change of
    log(weight) per step per unit of relative error; ``max_error`` clips the relative error, so
    one noisy step cannot move the weight by more than ``exp(gain * max_error)``. ``beta``: EMA
    factor of the per-step signal (0.9 is an average over about 10 steps). ``calibrate``: re-aim
    the replay signal at each evaluation from the measured replay/general ratio, clamped to
    ``ratio_bounds``. ``slack``: how far above its final aim the drift may run at the start of
    the run (see the module docstring); 0 aims at the same drift throughout. ``warmup``: share
    of the run spent warming up the LR; an evaluation before its end does not end the hold on
    lowering the weight.
    """

    budget: float
    initial_weight: float = 1.0
    min_weight: float = 0.05
    max_weight: float = 100.0
    target_fraction: float = 0.8
    gain: float = 0.2
    max_error: float = 0.5
    beta: float = 0.9
    calibrate: bool = True
    ratio_bounds: tuple[float, float] = (0.2, 5.0)
    slack: float = 0.0
    warmup: float = 0.0
    state: KLControlState = field(init=False)
    _pending: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.budget <= 0:
            raise ValueError(f"KL budget must be > 0 to steer towards it, got {self.budget}")
        if self.slack < 0:
            raise ValueError(f"KL target slack must be >= 0, got {self.slack}")
        if not 0 < self.min_weight <= self.max_weight:
            raise ValueError(f"KL weight bounds must satisfy 0 < min <= max, got [{self.min_weight}, {self.max_weight}]")
        start = min(max(self.initial_weight, self.min_weight), self.max_weight)
        self.state = KLControlState(log_weight=math.log(start))

    # --- the control law --------------------------------------------------------------------

    @property
    def weight(self) -> float:
        """The KL-to-base weight to use for the current step."""
        return math.exp(self.state.log_weight)

    @property
    def aim(self) -> float:
        """The general KL the controller aims at now (the budget's share at this point of the run)."""
        return self.target_fraction * self.budget * (1.0 + self.slack * (1.0 - self.state.progress) ** 2)

    @property
    def target(self) -> float:
        """The replay-KL value the controller steers the smoothed signal to."""
        return self.aim * self.state.ratio

    def observe(self, kl: float) -> None:
        """Record one micro-batch's replay KL (called from the loss; applied at :meth:`step`)."""
        if math.isfinite(kl):
            self._pending.append(kl)

    def step(self, progress: float | None = None) -> None:
        """End of an optimizer step: fold the step's replay KL into the EMA and move the weight.

        ``progress``: share of the run's optimizer steps done (global step / max steps), which sets
        the aim; None keeps the last one. A step without replay rows moves nothing else: no
        measurement, no correction.
        """
        s = self.state
        if progress is not None:
            s.progress = min(max(progress, 0.0), 1.0)
        if not self._pending:
            return
        signal = sum(self._pending) / len(self._pending)
        self._pending.clear()
        s.last_signal = signal
        s.ema = signal if s.ema is None else self.beta * s.ema + (1.0 - self.beta) * signal
        error = max(-self.max_error, min(self.max_error, s.ema / self.target - 1.0))
        s.reached = s.reached or error >= 0
        if not s.reached:
            # Early in training the drift is low because nothing has been learned yet, not because
            # there is room: lowering the weight then (seen on a new domain: 1 -> 0.45 by step 10)
            # left the drift to jump to 15x the budget when learning began.
            error = max(error, 0.0)
        lo, hi = math.log(self.min_weight), math.log(self.max_weight)
        s.log_weight = max(lo, min(hi, s.log_weight + self.gain * error))
        s.updates += 1

    def observe_eval(self, general_kl: float | None) -> None:
        """An evaluation measured ``general_kl`` on the general prompts: re-aim the replay signal.

        If the replay rows drift half as much as the general prompts, the replay signal must sit at
        half the budget for the general KL to sit at the budget. Skipped before any replay signal,
        and when the drift is too small for its ratio to mean anything (step 0, a near no-op).

        After the warmup it also ends the hold on lowering the weight: a long run's warmup can
        keep the early drift under the target, and the hold then kept the weight at its start
        while the evaluations measured the drift at half its aim or less.
        """
        s = self.state
        if general_kl is None or s.ema is None or general_kl < 1e-4 or s.ema < 1e-6:
            return
        if s.progress >= self.warmup:
            s.reached = True
        if self.calibrate:
            lo, hi = self.ratio_bounds
            s.ratio = max(lo, min(hi, s.ema / general_kl))

    def terms(self) -> dict[str, float]:
        """Every term of the controller, for TensorBoard and metrics.jsonl."""
        s = self.state
        out = {
            "kl_control/weight": self.weight, "kl_control/target": self.target, "kl_control/aim": self.aim,
            "kl_control/ratio": s.ratio, "kl_control/updates": float(s.updates),
        }  # fmt: skip
        if s.ema is not None:
            out["kl_control/signal_ema"] = s.ema
        if s.last_signal is not None:
            out["kl_control/signal"] = s.last_signal
        return out

    # --- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The state as plain JSON types (floats round-trip exactly through ``json``)."""
        return {"version": STATE_VERSION, **asdict(self.state)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"KL controller state version {d.get('version')!r}, expected {STATE_VERSION}")
        self.state = KLControlState(**{k: v for k, v in d.items() if k != "version"})
        self._pending.clear()

    def save(self, checkpoint: Path) -> None:
        """Write the state into a checkpoint folder (atomically)."""
        atomic_write_text(checkpoint / KL_CONTROL_STATE, json.dumps(self.state_dict()) + "\n")

    def load(self, checkpoint: Path) -> None:
        """Restore the state saved in a checkpoint folder.

        A checkpoint written without a controller has no state file: resuming it under a
        controller would steer from a made-up state, so that is an error, not a silent restart.
        """
        path = checkpoint / KL_CONTROL_STATE
        if not path.exists():
            raise ForgetlessError(f"{checkpoint} has no {KL_CONTROL_STATE}: it was written without the KL controller (train.kl_control); resume with train.kl_control=fixed")
        self.load_state_dict(json.loads(path.read_text(encoding="utf-8")))


def make_kl_controller(train: TrainConfig, budget: BudgetConfig, *, kl_weight: float) -> KLController | None:
    """The controller a run's config asks for, or None for a fixed weight.

    Steering needs a target and a term to steer: ``train.kl_control: auto`` with a
    ``budget.general_kl`` and a KL term in use (``kl_weight > 0``). Anything else keeps the fixed
    ``train.kl_to_base``.
    """
    if train.kl_control != "auto" or budget.general_kl is None or budget.general_kl <= 0 or kl_weight <= 0:
        return None
    return KLController(
        budget=budget.general_kl, initial_weight=kl_weight, min_weight=train.kl_weight_min, max_weight=train.kl_weight_max,
        target_fraction=train.kl_target, gain=train.kl_gain, slack=train.kl_target_slack, warmup=train.warmup_ratio,
    )  # fmt: skip


def kl_control_section(history: list[dict[str, Any]]) -> str | None:
    """report.md section: the steered weight next to the drift it steers, per evaluation."""
    rows = [h for h in history if "kl_control/weight" in h]
    if not rows:
        return None
    lines = ["## KL weight steered by the budget (train.kl_control: auto)", "",
             "Replay KL: mean of the per-step KL on replay rows since the previous evaluation; general KL: token mean on the general prompts; "
             "aim: the general KL the controller aimed at, at that point of the run (train.kl_target_slack).", "",
             "| step | KL weight | replay KL target | replay KL | general KL aim | general KL |", "|---|---|---|---|---|---|"]  # fmt: skip
    for h in rows:
        rk = h.get("train/replay_kl")
        lines.append(f"| {h['step']} | {h['kl_control/weight']:.3f} | {h['kl_control/target']:.4f} | {'' if rk is None else f'{rk:.4f}'} | {h.get('kl_control/aim', float('nan')):.4f} | {h.get('general/kl', float('nan')):.4f} |")
    return "\n".join(lines)
