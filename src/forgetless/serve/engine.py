"""The inference engine: one worker thread, one copy of the weights, micro-batched generation.

Requests queue up; the worker takes whatever arrived within a few milliseconds (up to
``max_batch``) and runs them as one batch. Adapter and base rows share that batch: PEFT's
``adapter_names`` applies the LoRA delta row by row (``"__base__"`` skips it), so switching between
adapter and base per request copies nothing and needs no lock: only the worker touches the model.

Why a hand-written decode loop instead of ``model.generate``: each row needs its own sampling
settings, stop strings, streaming callback and a NaN check on its logits at every step (the
adapter-failure fallback), and finished rows leave the batch early (``batch_select_indices``).

Fallback: when an adapter row produces NaN/inf logits, or the batched forward raises, the
affected requests continue on the base model from the tokens they already have, are counted in
``forgetless_fallbacks_total`` and report the route ``fallback``. A failure that belongs to one
row (its sampling settings, its stream) fails that request alone; the rest of the batch goes on.

A merged deployment variant (int8, GGUF: ``adapter_name`` None) is one plain model: there is no
adapter to switch off, so no base route, no router and no fallback. Every row runs the variant
and reports the route ``variant``; a row whose logits go non-finite fails.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from .jobs import Event, GenParams, Job, QueueFull
from .metrics import ServeMetrics
from .router import Router

log = logging.getLogger("forgetless.serve")

BASE = "__base__"  # PEFT's per-row name for "no adapter"
VARIANT = "variant"  # the route of every request on a merged variant (no adapter, no base)
_STOP = object()  # queue sentinel: finish what is queued before it, then stop


class Engine:
    """Owns the model (a PeftModel holding one adapter, or a merged variant) and the worker thread that runs it."""

    def __init__(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        *,
        adapter_name: str | None,
        router: Router | None,
        metrics: ServeMetrics,
        max_batch: int = 32,
        batch_window_s: float = 0.005,
        max_queue: int = 256,
        variant: str = "adapter",
    ) -> None:
        self.model, self.tok = model, tok
        self.variant = variant  # what this engine serves (adapter, int8, gguf-<type>): the response header names it
        self.adapter_name = adapter_name
        if adapter_name is None and router is not None:
            raise ValueError("a merged variant has no adapter to route around: serve it without a router")
        self.router = router
        self.metrics = metrics
        self.monitor: Any = None  # a DriftMonitor (serve/monitor.py) sees every finished job, if set
        self.max_batch, self.batch_window_s = max_batch, batch_window_s
        self.eos_ids = {i for i in [tok.eos_token_id, getattr(model.config, "eos_token_id", None)] if isinstance(i, int)}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="forgetless-engine", daemon=True)
        # transformers 5.2x renamed the KV-cache argument `past_key_values` -> `cache` (the old name warns).
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._cache_kw = "cache" if "cache" in inspect.signature(type(inner).forward).parameters else "past_key_values"
        if router is not None:
            metrics.router_threshold.set(router.threshold)

    @property
    def merged(self) -> bool:
        """True for a merged variant: one model, no adapter to switch off and no base to fall back to."""
        return self.adapter_name is None

    # --- public API (any thread) ----------------------------------------------------------------
    def start(self) -> Engine:
        """Start the worker thread."""
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        """Queue a job; raises :class:`QueueFull` when the queue is at capacity."""
        try:
            self._q.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None
        self.metrics.queue_depth.set(self._q.qsize())

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker thread between batches (model changes go through here)."""
        fut: Future = Future()
        self._q.put(fut_item(fn, fut))
        return fut

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then stop the worker."""
        self._q.put(_STOP)
        self._thread.join(timeout)

    # --- worker ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            if isinstance(item, _Call):
                item.run()
                continue
            batch, pending = [item], None
            deadline = time.perf_counter() + self.batch_window_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is _STOP or isinstance(nxt, _Call):
                    pending = nxt  # handled after this batch, keeping queue order
                    break
                batch.append(nxt)
            self.metrics.queue_depth.set(self._q.qsize())
            self._process([j for j in batch if not j.cancelled])
            if pending is _STOP:
                return
            if pending is not None:
                pending.run()

    def _process(self, batch: list[Job]) -> None:
        if not batch:
            return
        self.metrics.batch_size.observe(len(batch))
        self._route(batch)
        try:
            retry = self._generate(batch)
        except Exception as e:  # noqa: BLE001 - any failure of the adapter path falls back to the base
            log.exception("batch of %d failed", len(batch))
            _drop_leaked_peft_hooks(self.model)
            retry = [(j, "exception") for j in batch if not j.finished and j.route == "adapter" and not self.merged]
            for j in batch:
                if not j.finished and (j.route != "adapter" or self.merged):
                    self._fail(j, f"generation failed: {type(e).__name__}")
        if retry:
            for j, reason in retry:
                j.route = "fallback"
                self.metrics.fallbacks.labels(reason).inc()
                log.warning("fallback to base (%s) after %d tokens", reason, len(j.generated))
            jobs = [j for j, _ in retry]
            try:
                self._generate(jobs)
            except Exception as e:  # noqa: BLE001 - the base failed too: the request fails
                log.exception("fallback batch failed")
                _drop_leaked_peft_hooks(self.model)
                for j in jobs:
                    if not j.finished:
                        self._fail(j, f"generation failed: {type(e).__name__}")

    def _route(self, batch: list[Job]) -> None:
        if self.merged:
            # The server refuses a base request before it gets here; anything that does runs the variant.
            for j in batch:
                j.route = VARIANT
            return
        auto = [j for j in batch if j.want == "auto"]
        for j in batch:
            if j.want != "auto":
                j.route = j.want
        if not auto:
            return
        if self.router is None:
            for j in auto:
                j.route = "adapter"
            return
        try:
            scores = self.router.score(self.model, [j.prompt for j in auto], pad_id=self.pad_id)
        except Exception:  # noqa: BLE001 - a broken router must not take requests down: use the base
            log.exception("router failed; sending %d requests to the base", len(auto))
            self.metrics.fallbacks.labels("router_error").inc(len(auto))
            for j in auto:
                j.route = "fallback"
            return
        for j, s in zip(auto, scores):
            j.score = float(s)
            j.route = "base" if s > self.router.threshold else "adapter"
            self.metrics.router_margin.observe(self.router.margin(j.score))

    def _names(self, jobs: list[Job]) -> list[str]:
        return [self.adapter_name if j.route == "adapter" and self.adapter_name is not None else BASE for j in jobs]

    def _forward(self, names: list[str], **kw: Any) -> Any:
        # A plain (merged) model has no adapter_names argument: it would be passed down unchecked.
        return self.model(**kw) if self.merged else self.model(adapter_names=names, **kw)

    def _generate(self, jobs: list[Job]) -> list[tuple[Job, str]]:
        """Decode ``jobs`` together; returns adapter rows whose logits went NaN (for a base retry)."""
        seqs = [j.prompt.ids + j.generated for j in jobs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, s in enumerate(seqs):  # left padding: every row's next token lands in the same column
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = list(jobs)
        names = self._names(rows)
        cache = DynamicCache()
        out = self._forward(names, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                            logits_to_keep=1, **{self._cache_kw: cache})  # fmt: skip
        retry: list[tuple[Job, str]] = []
        while True:
            logits = out.logits[:, -1].float()
            bad = ~torch.isfinite(logits).all(-1)
            keep: list[int] = []
            next_tokens: list[int] = []
            for r, job in enumerate(rows):
                if bad[r]:
                    if self.merged:
                        self._fail(job, "the model produced non-finite logits")
                    elif names[r] != BASE:
                        retry.append((job, "nan"))
                    else:
                        self._fail(job, "the base model produced non-finite logits")
                    continue
                if job.cancelled:
                    job.finished = True
                    continue
                try:
                    tok_id = self._sample(logits[r], job)
                    goes_on = self._push(job, tok_id)
                except Exception as e:  # noqa: BLE001 - one row's bad settings fail that request only, not its batch
                    log.exception("request failed while sampling or streaming its token")
                    if not job.finished:
                        try:
                            self._fail(job, f"generation failed: {type(e).__name__}")
                        except Exception:  # noqa: BLE001 - its stream is what broke: nothing left to tell it
                            job.finished = True
                    continue
                if goes_on:
                    keep.append(r)
                    next_tokens.append(tok_id)
            if not keep:
                return retry
            if len(keep) < len(rows):
                sel = torch.tensor(keep)
                cache.batch_select_indices(sel)
                mask, pos = mask[sel], pos[sel]
                rows = [rows[r] for r in keep]
                names = [names[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
            out = self._forward(names, input_ids=torch.tensor(next_tokens)[:, None], attention_mask=mask, position_ids=pos,
                                use_cache=True, **{self._cache_kw: cache})  # fmt: skip

    def _sample(self, logits: torch.Tensor, job: Job) -> int:
        p = job.params
        if p.temperature <= 0:
            return int(logits.argmax())
        # Shift by the max first and divide in float64: a tiny temperature then gives -inf (probability
        # 0) for every other token, never inf - inf or 0 / 0 = NaN (1e-300 is 0 in float32).
        shifted = logits.double() - logits.max().double()
        probs = torch.softmax(shifted / p.temperature, dim=-1).float()
        if p.top_p < 1.0:
            sp, si = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
            cut = sp.cumsum(-1) - sp > p.top_p
            sp[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, si, sp)
        if job.generator is None:
            job.generator = torch.Generator()
            job.generator.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**31, (1,))))
        return int(torch.multinomial(probs, 1, generator=job.generator))

    def _push(self, job: Job, tok_id: int) -> bool:
        """Add a token to a job and stream the new text; returns whether the job goes on."""
        p = job.params
        finish = None
        if tok_id in self.eos_ids:
            finish = "stop"
        else:
            job.generated.append(tok_id)
        text = self.tok.decode(job.generated, skip_special_tokens=True)
        for s in p.stop:
            at = text.find(s)
            if at >= 0:
                text, finish = text[:at], "stop"
        if finish is None and len(job.generated) >= p.max_tokens:
            finish = "length"
        if finish is None:
            # Hold back an incomplete UTF-8 character and anything that could be the start of a stop string.
            safe = len(text) - max((len(s) - 1 for s in p.stop), default=0)
            while safe > len(job.emitted) and text[safe - 1] == "\ufffd":
                safe -= 1
            text = text[: max(safe, len(job.emitted))]
        if not job.started:
            job.started = True
            self.metrics.ttft.labels(job.route).observe(time.perf_counter() - job.created)
            job.deliver(Event("start", route=job.route, score=job.score, prompt_tokens=len(job.prompt)))
        if len(text) > len(job.emitted):
            job.deliver(Event("delta", text=text[len(job.emitted) :], route=job.route))
            job.emitted = text
        if finish is not None:
            job.finished = True
            job.deliver(Event("done", route=job.route, score=job.score, finish_reason=finish,
                              prompt_tokens=len(job.prompt), completion_tokens=len(job.generated)))  # fmt: skip
            if self.monitor is not None:
                self.monitor.observe(job)  # after delivery: never on the request's path
            return False
        return True

    def _fail(self, job: Job, message: str) -> None:
        job.finished = True
        job.deliver(Event("error", route=job.route, error=message))


def _drop_leaked_peft_hooks(model: Any) -> None:
    """Remove PEFT's per-call ``adapter_names`` hooks left behind by a forward pass that raised.

    PEFT removes them after the forward returns, not in a ``finally``: after an exception they
    would stay and force that batch's adapter names onto every later call.
    """
    try:
        from peft.tuners.lora.model import _adapter_names_pre_forward_hook
    except ImportError:  # a PEFT without it has nothing to leak
        return
    for mod in model.modules():
        for key, hook in list(mod._forward_pre_hooks.items()):
            if getattr(hook, "func", None) is _adapter_names_pre_forward_hook:
                del mod._forward_pre_hooks[key]
                mod._forward_pre_hooks_with_kwargs.pop(key, None)


@dataclass
class _Call:
    fn: Callable[[], Any]
    fut: Future

    def run(self) -> None:
        if not self.fut.set_running_or_notify_cancel():
            return
        try:
            self.fut.set_result(self.fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            self.fut.set_exception(e)


def fut_item(fn: Callable[[], Any], fut: Future) -> _Call:
    """Wrap a callable for the worker queue."""
    return _Call(fn, fut)
