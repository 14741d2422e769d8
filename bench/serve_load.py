"""Loopback load test of `forgetless serve`: N requests at concurrency C, bounded in count and time.

Builds a run folder (the embedded base model + a LoRA adapter + a router calibrated on the sample
pharma domain), starts the real server on 127.0.0.1 (ephemeral port), sends chat requests that
cycle through the three served models (auto, adapter, base) with held-out domain questions and
general prompts, and prints a table: status counts, latency p50/p90/p99, throughput, routes.
Exits 1 if any request got a 5xx or failed.

    .venv/bin/python bench/serve_load.py                      # 1000 requests, concurrency 32
    .venv/bin/python bench/serve_load.py --run runs/pharma    # an existing run folder instead
    .venv/bin/python bench/serve_load.py --monitor-ab 3 --requests 120   # drift monitor off vs on (default rate),
                                                              # interleaved rounds: latency overhead
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from forgetless import artifacts  # noqa: E402
from forgetless.io import read_jsonl  # noqa: E402
from forgetless.models import load_model, load_tokenizer  # noqa: E402
from forgetless.serve.app import ServeSettings, create_app  # noqa: E402
from forgetless.serve.deployment import EngineSettings  # noqa: E402
from forgetless.serve.router import calibrate_router  # noqa: E402

PHARMA = ROOT / "examples" / "data" / "pharma"
GENERAL = ROOT / "src" / "forgetless" / "serve" / "data" / "general_prompts.jsonl"
CAL_GENERAL = ROOT / "src" / "forgetless" / "evaluate" / "data" / "general_prompts.v1.jsonl"
KEY = "bench-key"


def build_run(folder: Path, model_name: str, n_domain: int, n_general: int) -> Path:
    """A run folder: base model, a LoRA adapter (random, non-zero, so the adapter path does real work) and a router."""
    from peft import LoraConfig, get_peft_model

    tok, base = load_tokenizer(model_name), load_model(model_name)
    torch.manual_seed(0)
    pm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                              "gate_proj", "up_proj", "down_proj"]))  # fmt: skip
    with torch.no_grad():  # small non-zero B: the adapter changes outputs a little, like a trained one
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    pm.save_pretrained(folder / artifacts.ADAPTER_DIR)
    (folder / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump({"model": {"name": model_name, "dtype": "float32"}}))
    domain = [r["messages"][0]["content"] for r in read_jsonl(PHARMA / "train_qa.jsonl")][:n_domain]
    general = [r["prompt"] for r in read_jsonl(CAL_GENERAL)][:n_general]
    info = calibrate_router(pm, tok, domain, general, folder)
    print(f"router: calibration AUROC {info['calibration_auroc']:.3f} on {len(domain)} domain / {len(general)} general texts")
    return folder


async def load(url: str, n: int, concurrency: int, max_tokens: int, time_limit: float) -> tuple[list, float]:
    """Send ``n`` requests with ``concurrency`` in flight; stop starting new ones after ``time_limit`` s."""
    prompts = [r["question"] for r in read_jsonl(PHARMA / "heldout_qa.jsonl")] + [r["prompt"] for r in read_jsonl(GENERAL)]
    models = ["forgetless-auto", "forgetless-adapter", "forgetless-base"]
    results: list[tuple[int, float, str]] = []
    next_i = 0
    t_start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < n and time.perf_counter() - t_start < time_limit:
            i, next_i = next_i, next_i + 1
            body = {"model": models[i % 3], "messages": [{"role": "user", "content": prompts[i % len(prompts)]}], "max_tokens": max_tokens}
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/chat/completions", json=body)
                results.append((r.status_code, time.perf_counter() - t0, r.headers.get("x-forgetless-route", "-")))
            except httpx.HTTPError as e:
                results.append((-1, time.perf_counter() - t0, type(e).__name__))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=600, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results, time.perf_counter() - t_start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="serve this run folder instead of building one")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model for the built run")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=900.0, help="stop sending new requests after this many seconds")
    ap.add_argument("--monitor-sample-rate", type=float, default=0.03, help="drift monitor sample rate (the server's default)")
    ap.add_argument("--monitor-ab", type=int, default=0, metavar="ROUNDS",
                    help="compare the drift monitor off (rate 0) and on (--monitor-sample-rate) over ROUNDS interleaved rounds")
    args = ap.parse_args()
    if args.monitor_ab:
        return monitor_ab(args)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build_run(Path(tmp) / "run", args.model, n_domain=70, n_general=40)
        settings = ServeSettings(api_key=KEY, engine=EngineSettings(max_batch=args.concurrency, max_queue=4 * args.concurrency,
                                                                    monitor_sample_rate=args.monitor_sample_rate))
        app = create_app(lambda: run, settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            if not th.is_alive():
                print("server failed to start")
                return 1
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        results, wall = asyncio.run(load(url, args.requests, args.concurrency, args.max_tokens, args.time_limit))
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        server.should_exit = True
        th.join(30)
    codes = Counter(c for c, _, _ in results)
    lat = np.array([t for c, t, _ in results if c == 200]) * 1000
    routes = Counter(r for c, _, r in results if c == 200)
    batches = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines() if ln.startswith("forgetless_batch_size_")}
    mean_batch = batches.get("forgetless_batch_size_sum", 0) / max(batches.get("forgetless_batch_size_count", 1), 1)
    n5xx = sum(v for c, v in codes.items() if c >= 500 or c < 0)
    rows = [
        ("requests sent / planned", f"{len(results)} / {args.requests}"),
        ("concurrency", args.concurrency),
        ("max_tokens per request", args.max_tokens),
        ("HTTP 200", codes.get(200, 0)),
        ("HTTP 4xx", sum(v for c, v in codes.items() if 400 <= c < 500)),
        ("HTTP 5xx or failed", n5xx),
        ("latency p50 (ms)", f"{np.percentile(lat, 50):.0f}" if len(lat) else "-"),
        ("latency p90 (ms)", f"{np.percentile(lat, 90):.0f}" if len(lat) else "-"),
        ("latency p99 (ms)", f"{np.percentile(lat, 99):.0f}" if len(lat) else "-"),
        ("latency max (ms)", f"{lat.max():.0f}" if len(lat) else "-"),
        ("throughput (req/s)", f"{len(results) / wall:.2f}"),
        ("wall time (s)", f"{wall:.1f}"),
        ("mean micro-batch size", f"{mean_batch:.1f}"),
        ("routes (200s)", ", ".join(f"{k} {v}" for k, v in sorted(routes.items()))),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"| {'metric':<{w}} | value |\n|{'-' * (w + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:<{w}} | {v} |")
    return 1 if n5xx or len(results) < args.requests else 0


def serve_once(run: Path, args: argparse.Namespace, rate: float) -> tuple[list, float, str]:
    """Start a server on ``run`` with the monitor at ``rate``, send the load, return (results, wall, /metrics)."""
    settings = ServeSettings(api_key=KEY, engine=EngineSettings(max_batch=args.concurrency, max_queue=4 * args.concurrency,
                                                                monitor_sample_rate=rate))  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: run, settings), host="127.0.0.1", port=0, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        if not th.is_alive():
            raise RuntimeError("server failed to start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        results, wall = asyncio.run(load(url, args.requests, args.concurrency, args.max_tokens, args.time_limit))
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    finally:
        server.should_exit = True
        th.join(30)
    return results, wall, metrics


def monitor_ab(args: argparse.Namespace) -> int:
    """Latency with the drift monitor off vs on, rounds interleaved (off, on, on, off, ...) so a
    neighbour process stealing the CPU, and the order within a round, hit both arms alike; prints
    per-arm means over rounds."""
    arms = {"off": 0.0, "on": args.monitor_sample_rate}
    lat: dict[str, list[float]] = {a: [] for a in arms}
    wall: dict[str, list[float]] = {a: [] for a in arms}
    scored = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build_run(Path(tmp) / "run", args.model, n_domain=70, n_general=40)
        for rnd in range(args.monitor_ab):
            # ABBA order: whichever arm runs second in a round ran faster here (warm caches), so
            # a fixed order showed the monitor at -5%.
            order = list(arms.items()) if rnd % 2 == 0 else list(arms.items())[::-1]
            for arm, rate in order:
                results, w, metrics = serve_once(run, args, rate)
                ok = [t for c, t, _ in results if c == 200]
                if len(ok) < len(results):
                    codes = Counter(c for c, _, _ in results if c != 200)
                    print(f"round {rnd} {arm}: {len(results) - len(ok)} requests failed (status: {dict(codes)}; -1 is a client-side error)")
                    return 1
                lat[arm] += ok
                wall[arm].append(w)
                if arm == "on":
                    scored += sum(float(ln.split()[1]) for ln in metrics.splitlines() if ln.startswith('forgetless_drift_samples_total{outcome="scored"}'))
                print(f"round {rnd} {arm}: mean {1000 * np.mean(ok):.0f} ms, wall {w:.1f} s", file=sys.stderr)
    m = {a: 1000 * float(np.mean(v)) for a, v in lat.items()}
    p50 = {a: 1000 * float(np.median(v)) for a, v in lat.items()}
    print(f"| arm | sample rate | requests | mean latency (ms) | p50 (ms) | wall per round (s) |\n|---|---|---|---|---|---|")
    for a, rate in arms.items():
        print(f"| monitor {a} | {rate} | {len(lat[a])} | {m[a]:.0f} | {p50[a]:.0f} | {np.mean(wall[a]):.1f} |")
    print(f"\nmonitor overhead on mean latency: {100 * (m['on'] / m['off'] - 1):+.1f}%, on p50: {100 * (p50['on'] / p50['off'] - 1):+.1f}%; "
          f"KL samples scored in the 'on' rounds: {scored:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
