"""``forgetless bench``: time to first token, per-token latency, throughput and peak memory per variant.

Each variant is measured in its own fresh Python process, so its peak RSS is its own and not the
high-water mark left behind by a variant measured before it (``ru_maxrss`` never goes down). The
parent process only orchestrates, draws the progress bar and collects one JSON line per variant.

Concurrency ``c`` means ``c`` requests decoded together as one left-padded batch, which is how a
batching server (and forgetless' own serve stage) answers concurrent requests on one model. Every
request generates exactly ``max_new_tokens`` tokens (EOS is suppressed until then), so each
variant does the same work and the numbers compare.

Timing uses a logits processor that ``generate`` calls once per new token, right after that
token's forward pass: the first call marks the time to first token (prefill + one step), the
spacing of the later calls is the per-token decode latency.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..errors import ForgetlessError
from ..io import atomic_write_json

# Prompts of mixed length and topic: latency depends on prompt length, not content, but a real mix
# keeps the prefill share honest. Request i uses prompt i mod len(PROMPTS).
PROMPTS = (
    "What is the capital of France?",
    "Write a short Python function that returns the square of a number.",
    "Explain in two sentences why the sky is blue.",
    "List three common side effects of antihistamines.",
    "Summarise the plot of Romeo and Juliet in one paragraph, mentioning the main characters and how the story ends.",
    "What is 17 multiplied by 23?",
    "Give me a friendly greeting for a customer support chat.",
    "Translate 'good morning, how are you?' into Spanish.",
)


@dataclass
class BenchSpec:
    """What one worker measures."""

    target: str
    variant: str
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 8])
    max_new_tokens: int = 32
    repeats: int = 3
    device: str = "cpu"
    threads: int = 0
    int8_backend: str = "torch"
    trust_remote_code: bool = False  # run the model's own code: only for a run trained with it, when the user allows it


class _StepClock:
    """A logits processor that only records when each decode step's logits are ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.is_cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores


def _rss_mb() -> float:
    # Current resident set, from /proc (Linux); ru_maxrss gives the peak.
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _one_run(model: Any, tok: Any, prompts: list[list[int]], max_new: int, device: str) -> dict[str, float]:
    from transformers import LogitsProcessorList

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    clock = _StepClock()
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
            pad_token_id=pad, eos_token_id=tok.eos_token_id, logits_processor=LogitsProcessorList([clock]),
            temperature=None, top_p=None, top_k=None,
        )
    if device != "cpu":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    new = out.shape[1] - width
    ts = clock.times
    return {
        "ttft_ms": (ts[0] - t0) * 1000,
        "tpot_ms": ((ts[-1] - ts[0]) / (len(ts) - 1) * 1000) if len(ts) > 1 else float("nan"),
        "tokens_per_s": len(prompts) * new / (t1 - t0),
        "new_tokens": new,
    }


def run_worker(spec: BenchSpec) -> dict[str, Any]:
    """Measure one variant in this process (called in a fresh subprocess by :func:`run_bench`)."""
    from ..evaluate.scoring import chat_prompt_ids
    from .variants import load_target_tokenizer, load_variant, resolve_target

    if spec.threads:
        torch.set_num_threads(spec.threads)
    rss_start = _rss_mb()  # interpreter + torch + transformers, before any weights
    t = resolve_target(spec.target, allow_remote_code=spec.trust_remote_code)
    tok = load_target_tokenizer(t)
    if spec.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = load_variant(t, spec.variant, device=spec.device, int8_backend=spec.int8_backend, tok=tok)
    load_s = time.perf_counter() - t0
    prompts = [chat_prompt_ids(tok, p) for p in PROMPTS]
    # Warm-up: the first generate pays one-off costs (kernel selection, allocator growth).
    _one_run(model, tok, prompts[:1], 4, spec.device)
    rows = []
    for c in spec.concurrency:
        batch = [prompts[i % len(prompts)] for i in range(c)]
        runs = [_one_run(model, tok, batch, spec.max_new_tokens, spec.device) for _ in range(spec.repeats)]
        # Median of repeats: robust to a neighbour process stealing the CPU for one run.
        rows.append({"concurrency": c, **{k: statistics.median(r[k] for r in runs) for k in ("ttft_ms", "tpot_ms", "tokens_per_s")}})
    res: dict[str, Any] = {
        "variant": spec.variant,
        "load_s": load_s,
        "rss_start_mb": rss_start,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "device": spec.device,
        "rows": rows,
    }
    if spec.device != "cpu":
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if spec.variant == "int8":
        res["int8_backend"] = spec.int8_backend
    return res


def run_bench(
    target: str,
    variants: list[str],
    *,
    concurrency: list[int],
    max_new_tokens: int,
    repeats: int,
    device: str,
    threads: int = 0,
    int8_backend: str = "torch",
    timeout_s: float = 1800,
    on_variant: Any = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Benchmark each variant in its own subprocess; returns ``{"target", "settings", "results"}``.

    A variant that cannot run here (``nf4`` without CUDA, ``int8`` on a GPU) is recorded with
    ``skipped`` and the reason instead of failing the whole benchmark.
    """
    from .variants import nf4_available, resolve_target

    t = resolve_target(target, allow_remote_code=trust_remote_code)
    results = []
    for v in variants:
        if v not in t.variants():
            raise ForgetlessError(f"target {t.label} has no '{v}' variant (it has: {', '.join(t.variants())})")
        skip = None
        if v == "nf4":
            skip = nf4_available()
        elif v == "int8" and device != "cpu":
            skip = "int8 dynamic quantization runs on CPU kernels only"
        if skip:
            results.append({"variant": v, "skipped": skip})
        else:
            spec = BenchSpec(str(t.run_dir or t.base_model), v, concurrency, max_new_tokens, repeats, device, threads, int8_backend, trust_remote_code)
            proc = subprocess.run(
                [sys.executable, "-m", "forgetless.deploy.bench", json.dumps(spec.__dict__)],
                capture_output=True, text=True, timeout=timeout_s,
            )
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise ForgetlessError(f"benchmarking variant '{v}' failed:\n{tail}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if on_variant is not None:
            on_variant(v)
    return {
        "target": t.label,
        "base_model": t.base_model,
        "settings": {"concurrency": concurrency, "max_new_tokens": max_new_tokens, "repeats": repeats, "device": device, "torch": torch.__version__},
        "results": results,
    }


def default_bench_path(target_label: str) -> Path | None:
    """Where a run's bench JSON goes: ``<run>/deploy/bench.json`` (None for a bare model)."""
    p = Path(target_label)
    if (p / artifacts.RESOLVED_CONFIG).exists():
        return p / artifacts.DEPLOY_DIR / artifacts.BENCH_JSON
    return None


def save_bench(result: dict[str, Any], path: Path) -> None:
    """Write the bench result atomically."""
    atomic_write_json(path, result)


if __name__ == "__main__":  # the worker entry point used by run_bench
    import logging

    logging.disable(logging.WARNING)  # keep stdout's last line the JSON result
    spec = BenchSpec(**json.loads(sys.argv[1]))
    print(json.dumps(run_worker(spec)))
