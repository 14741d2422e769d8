"""Live drift monitor: how differently the adapter answers live traffic than the base would.

On a sample of the requests the adapter answered (``sample_rate``, default 3%), the monitor scores
the answer the client got under both the adapter and the base (the same weights, adapter off) and
exports the mean per-token ``KL(base || adapter)`` over the answer's tokens as a Prometheus
histogram: the same direction and unit as the training run's ``general/kl`` and its budget.

Off the request's critical path: the engine only hands the finished job's token ids to
:meth:`DriftMonitor.observe` (a deque append); a background thread picks them up and asks the
engine to run the scoring forward pass between two batches (:meth:`Engine.call`), because only the
engine thread may touch the model. The response was already delivered by then. When scoring falls
behind, samples are dropped (counted), never queued without bound.

Every auto-routed request also feeds rolling gauges over the last ``window`` of them: the share
sent to each route and quantiles of the router's margin (score minus threshold, in domain-score
standard deviations). A share or a margin that moves away from what the run was calibrated on
says the traffic moved.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter as _Counter
from collections import deque
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..runfolder import RunFolder, read_run_folder

log = logging.getLogger("forgetless.serve")

DEFAULT_SAMPLE_RATE = 0.03
DEFAULT_WINDOW = 500
# Per-token KL in nats. The demo run's own general/kl sits around 0.05-1.1 (docs/benchmarks.md);
# buckets span a well-behaved adapter (~0.01) to one that rewrites every answer (> 2).
KL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
ROUTES = ("adapter", "base", "fallback")
MARGIN_QUANTILES = ("0.05", "0.5", "0.95")
BASE = "__base__"  # PEFT's per-row name for "no adapter"


def run_kl_budget(run: RunFolder | Path) -> float | None:
    """``budget.general_kl`` of a run (None when the run set no KL budget).

    ``run``: an opened run folder, or its path (opened through the one run-folder reader, so a bad
    config is an error naming its file and line, not a silently missing alert).
    """
    if not isinstance(run, RunFolder):
        run = read_run_folder(run)
    return run.config.budget.general_kl


@torch.no_grad()
def answer_kl(model: Any, adapter_name: str, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """Mean over the answer's tokens of ``KL(base || adapter)`` of the next-token distributions.

    One forward pass of two rows (the same tokens, PEFT's ``adapter_names`` picks adapter or base
    per row), so it costs about one prefill of the prompt + answer. Full-vocabulary KL, exact.
    """
    if not answer_ids:
        return math.nan
    seq = torch.tensor([prompt_ids + answer_ids] * 2)
    dev = next(model.parameters()).device
    logits = model(input_ids=seq.to(dev), adapter_names=[adapter_name, BASE]).logits.float()
    # Answer token t is predicted from position t-1: the positions from the last prompt token on.
    start = len(prompt_ids) - 1
    span = logits[:, start : start + len(answer_ids)]
    lp_ad, lp_base = torch.log_softmax(span[0], -1), torch.log_softmax(span[1], -1)
    kl = (lp_base.exp() * (lp_base - lp_ad)).sum(-1)
    return float(kl.mean())


class DriftMonitor:
    """Samples adapter answers, scores their KL to the base in the background, exports the metrics.

    ``registry``: the server's own Prometheus registry. ``sample_rate``: share of adapter-answered
    requests scored (0 disables the KL part; route shares and margins are still tracked).
    ``kl_alert``: the KL the alerting rule compares against (the run's ``budget.general_kl``).
    """

    def __init__(self, registry: CollectorRegistry, *, sample_rate: float = DEFAULT_SAMPLE_RATE, window: int = DEFAULT_WINDOW,
                 kl_alert: float | None = None, max_pending: int = 16, seed: int | None = None) -> None:  # fmt: skip
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        self.sample_rate, self.window = sample_rate, window
        self._rng = random.Random(seed)
        self._pending: deque[tuple[list[int], list[int]]] = deque()
        self._max_pending = max_pending
        self._routes: deque[str] = deque(maxlen=window)
        self._margins: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._inflight = False
        self.engine: Any = None
        r = registry
        self.kl = Histogram("forgetless_drift_kl_per_token",
                            "Mean per-token KL(base || adapter) over a sampled adapter answer (nats).", buckets=KL_BUCKETS, registry=r)  # fmt: skip
        self.samples = Counter("forgetless_drift_samples", "Adapter answers picked for KL scoring, by outcome.", ["outcome"], registry=r)
        self.kl_alert = Gauge("forgetless_drift_kl_alert_threshold", "KL alert threshold: the run's budget.general_kl (NaN: none set).", registry=r)
        self.sample_rate_gauge = Gauge("forgetless_drift_sample_rate", "Share of adapter answers scored for KL.", registry=r)
        self.route_share = Gauge("forgetless_route_share", "Share of the last WINDOW auto-routed requests per route.", ["route"], registry=r)
        self.margin_q = Gauge("forgetless_router_margin_rolling", "Quantiles of the router margin over the last WINDOW auto requests.",
                              ["quantile"], registry=r)  # fmt: skip
        for outcome in ("scored", "dropped", "failed"):
            self.samples.labels(outcome)
        for route in ROUTES:
            self.route_share.labels(route).set(0.0)
        self.sample_rate_gauge.set(sample_rate)
        self.set_kl_alert(kl_alert)
        self._thread = threading.Thread(target=self._loop, name="forgetless-drift", daemon=True)
        self._thread.start()

    def set_kl_alert(self, value: float | None) -> None:
        """Set (or clear, with None) the exported alert threshold."""
        self.kl_alert.set(math.nan if value is None else float(value))

    def attach(self, engine: Any) -> None:
        """Watch ``engine`` (called again after a hot swap that built a new engine)."""
        self.engine = engine
        engine.monitor = self

    # --- called on the engine thread: must stay cheap and never raise ---------------------------
    def observe(self, job: Any) -> None:
        """A request finished: update the rolling route/margin gauges and maybe sample it for KL."""
        try:
            if job.want == "auto":
                with self._lock:
                    self._routes.append(job.route)
                    if job.score is not None and self.engine is not None and self.engine.router is not None:
                        self._margins.append(self.engine.router.margin(job.score))
                    self._publish()
            if job.route != "adapter" or self.sample_rate <= 0 or self._rng.random() >= self.sample_rate:
                return
            if len(self._pending) >= self._max_pending:
                self.samples.labels("dropped").inc()
                return
            self._pending.append((list(job.prompt.ids), list(job.generated)))
            self._wake.set()
        except Exception:  # noqa: BLE001 - monitoring must never fail a request
            log.exception("drift monitor observe failed")

    def _publish(self) -> None:
        n = len(self._routes)
        counts = _Counter(self._routes)
        for route in ROUTES:
            self.route_share.labels(route).set(counts[route] / n if n else 0.0)
        if self._margins:
            ordered = sorted(self._margins)
            for q in MARGIN_QUANTILES:
                self.margin_q.labels(q).set(ordered[min(len(ordered) - 1, int(float(q) * len(ordered)))])

    # --- background thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while self._pending and not self._stopped:
                self._inflight = True
                prompt, answer = self._pending.popleft()
                try:
                    self._score(prompt, answer)
                finally:
                    self._inflight = False

    def _score(self, prompt: list[int], answer: list[int]) -> None:
        engine = self.engine
        try:
            kl = engine.call(lambda: answer_kl(engine.model, engine.adapter_name, prompt, answer)).result(timeout=120)
        except Exception:  # noqa: BLE001 - a failed scoring is counted, the server goes on
            log.exception("drift scoring failed")
            self.samples.labels("failed").inc()
            return
        if math.isfinite(kl):
            self.kl.observe(max(kl, 0.0))  # float rounding can give -1e-9 for identical rows
            self.samples.labels("scored").inc()
        else:
            self.samples.labels("failed").inc()

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until every finished request is observed and every pending sample scored (tests)."""
        if self.engine is not None:
            # A no-op through the engine queue: when it runs, every earlier batch (and its observe) is done.
            self.engine.call(lambda: None).result(timeout=timeout)
        t0 = time.monotonic()
        while (self._pending or self._inflight) and time.monotonic() - t0 < timeout:
            self._wake.set()
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the background thread (pending samples are dropped)."""
        self._stopped = True
        self._wake.set()
        self._thread.join(5.0)
