"""Hostile-client soak test of `forgetless serve`: bounded, loopback only, stops by itself.

Starts the real server (uvicorn, 127.0.0.1, ephemeral port) on a run folder and sends N requests
with C in flight, cycling through kinds of client:

* valid: chat (auto / adapter / base), completion, streaming chat, sampled with a valid seed;
* invalid: malformed JSON, wrong types, unknown model, unsupported parameters, a hostile seed
  (2**70), a body over the limit with Content-Length and one chunked (no Content-Length), no API
  key on a random path, an unknown path;
* disconnecting: a non-streaming client that gives up before the answer, a streaming client that
  leaves after the first chunk.

Prints a table per kind and the checks: 0 5xx on valid requests, every invalid request a 4xx,
the number of metric series bounded (random paths must not add any), and the server still
answering a valid request in under 2 s afterwards. Exits 1 if a check fails.

The default model is the tiny random Llama of ``forgetless.testing`` (with a random LoRA adapter
and a router): the point is the server's behaviour under abuse, not the model's speed, and the
real 135M model on 2 CPU cores would need hours for 2,000 requests. ``--model NAME`` uses a real
base model instead.

    .venv/bin/python bench/soak.py                                  # 2000 requests, concurrency 32
    .venv/bin/python bench/soak.py --requests 200 --concurrency 8   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import torch
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from forgetless import artifacts  # noqa: E402
from forgetless.models import load_model, load_tokenizer  # noqa: E402
from forgetless.serve.app import ServeSettings, create_app  # noqa: E402
from forgetless.serve.deployment import EngineSettings  # noqa: E402
from forgetless.serve.router import calibrate_router  # noqa: E402
from forgetless.testing import save_tiny_model, tiny_tokenizer  # noqa: E402

KEY = "soak-key"
MAX_BODY = 1_000_000
DOMAIN = ["what drug treats marrowick syndrome", "zorvanex dose mg", "which drug is made by acme", "side effect of zorvanex"]
GENERAL = ["what is the capital of france", "one plus two equals three", "def return print python code", "hello world"]


def build_run(folder: Path, model: str) -> Path:
    """A run folder: the base (tiny or named), a random non-zero LoRA adapter and a calibrated router."""
    from peft import LoraConfig, get_peft_model

    if model == "tiny":
        name, tok = str(save_tiny_model(folder / "base", seed=0)), tiny_tokenizer()
    else:
        name, tok = model, load_tokenizer(model)
    base = load_model(name)
    torch.manual_seed(0)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    pm.save_pretrained(folder / artifacts.ADAPTER_DIR)
    (folder / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump({"model": {"name": name, "dtype": "float32"}}))
    calibrate_router(pm, tok, DOMAIN, GENERAL, folder, target_domain_to_base=0.25)
    return folder


def _chat(model: str = "forgetless-adapter", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "what is the dose of zorvanex"}], **extra}


def _chunked(total: int):
    async def gen():
        for _ in range(total // 65536 + 1):
            yield b"x" * 65536

    return gen()


# kind -> (class, coroutine factory(client, url, max_tokens) -> status code or a string outcome)
async def _post(c: httpx.AsyncClient, url: str, path: str, **kw: object) -> int:
    return (await c.post(url + path, **kw)).status_code


async def _disconnect_plain(c: httpx.AsyncClient, url: str, mt: int) -> int | str:
    try:
        r = await c.post(url + "/v1/chat/completions", json=_chat(max_tokens=mt * 8), timeout=httpx.Timeout(30, read=0.02))
        return r.status_code  # answered before the client gave up
    except httpx.ReadTimeout:
        return "left"


async def _disconnect_stream(c: httpx.AsyncClient, url: str, mt: int) -> int | str:
    async with c.stream("POST", url + "/v1/chat/completions", json=_chat(max_tokens=mt * 8, stream=True)) as r:
        async for _ in r.aiter_bytes():
            return "left"
        return r.status_code


async def _stream_ok(c: httpx.AsyncClient, url: str, mt: int) -> int:
    async with c.stream("POST", url + "/v1/chat/completions", json=_chat(max_tokens=mt, stream=True)) as r:
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
        # A stream that ends in an error event is a 5xx in all but its status line.
        return 500 if r.status_code == 200 and b'"server_error"' in body else r.status_code


KINDS = {
    "chat auto": ("valid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", json=_chat("forgetless-auto", max_tokens=mt))),
    "chat adapter": ("valid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", json=_chat(max_tokens=mt))),
    "chat base, sampled": ("valid", lambda c, u, mt: _post(c, u, "/v1/chat/completions",
                                                           json=_chat("forgetless-base", max_tokens=mt, temperature=1.0, seed=2**63))),
    "completion": ("valid", lambda c, u, mt: _post(c, u, "/v1/completions", json={"model": "forgetless-base", "prompt": "hello", "max_tokens": mt})),
    "chat stream": ("valid", _stream_ok),
    "malformed JSON": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", content=b'{"model": "forgetless-auto", "messages": [')),
    "wrong types": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", json={"model": 3, "messages": "hi", "max_tokens": "x"})),
    "unknown model": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", json=_chat("gpt-4o", max_tokens=mt))),
    "unsupported param": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", json=_chat(max_tokens=mt, n=3, logprobs=True))),
    "hostile seed": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", json=_chat(max_tokens=mt, temperature=1.0, seed=2**70))),
    "oversized, Content-Length": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", content=b"x" * (MAX_BODY + 1))),
    "oversized, chunked": ("invalid", lambda c, u, mt: _post(c, u, "/v1/chat/completions", content=_chunked(3 * MAX_BODY))),
    "no key, random path": ("invalid", lambda c, u, mt: _post(c, u, f"/{uuid.uuid4().hex}", headers={"Authorization": ""}, json={})),
    "unknown path": ("invalid", lambda c, u, mt: _post(c, u, f"/v1/{uuid.uuid4().hex}", json={})),
    "disconnect, non-streaming": ("disconnect", _disconnect_plain),
    "disconnect, streaming": ("disconnect", _disconnect_stream),
}


async def soak(url: str, n: int, concurrency: int, max_tokens: int, time_limit: float) -> tuple[dict[str, Counter], float]:
    """Send ``n`` requests, kinds in turn, ``concurrency`` in flight; stop starting new ones after ``time_limit`` s."""
    names = list(KINDS)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    next_i = 0
    t_start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < n and time.perf_counter() - t_start < time_limit:
            i, next_i = next_i, next_i + 1
            kind = names[i % len(names)]
            try:
                got: int | str = await KINDS[kind][1](client, url, max_tokens)
            except httpx.HTTPError as e:
                got = type(e).__name__
            outcomes[kind][got] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return outcomes, time.perf_counter() - t_start


def series(metrics: str) -> int:
    """Number of time series in a Prometheus exposition (sample lines)."""
    return sum(1 for ln in metrics.splitlines() if ln and not ln.startswith("#"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny' (default) or a base model name")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--time-limit", type=float, default=900.0, help="stop sending new requests after this many seconds")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {KEY}"}
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(Path(tmp) / "run", args.model)
        settings = ServeSettings(api_key=KEY, max_tokens_limit=64, max_body_bytes=MAX_BODY, max_queue_wait_s=30.0,
                                 engine=EngineSettings(max_batch=args.concurrency, max_queue=4 * args.concurrency))  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(create_app(lambda: run, settings), host="127.0.0.1", port=0, log_level="critical"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            if not th.is_alive():
                print("server failed to start")
                return 1
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        series_before = series(httpx.get(url + "/metrics", headers=headers).text)
        outcomes, wall = asyncio.run(soak(url, args.requests, args.concurrency, args.max_tokens, args.time_limit))
        time.sleep(1.0)  # cancelled generations finish their current step
        metrics = httpx.get(url + "/metrics", headers=headers).text
        t0 = time.perf_counter()
        after = httpx.post(url + "/v1/chat/completions", headers=headers, json=_chat(max_tokens=args.max_tokens), timeout=30)
        after_s = time.perf_counter() - t0
        server.should_exit = True
        th.join(30)

    def is_4xx(k: object) -> bool:
        return isinstance(k, int) and 400 <= k < 500

    print(f"\n{'kind':28} {'class':10} {'n':>5}  outcomes")
    for kind, (cls, _) in KINDS.items():
        got = outcomes.get(kind, Counter())
        print(f"{kind:28} {cls:10} {sum(got.values()):5}  {', '.join(f'{k}: {v}' for k, v in sorted(got.items(), key=str))}")
    valid = Counter()
    invalid = Counter()
    for kind, (cls, _) in KINDS.items():
        if cls == "valid":
            valid.update(outcomes.get(kind, Counter()))
        elif cls == "invalid":
            invalid.update(outcomes.get(kind, Counter()))
    sent = sum(sum(c.values()) for c in outcomes.values())
    valid_5xx = sum(v for k, v in valid.items() if not (isinstance(k, int) and k < 500))
    invalid_not_4xx = sum(v for k, v in invalid.items() if not is_4xx(k))
    n_series = series(metrics)
    endpoints = sorted({ln.split('endpoint="')[1].split('"')[0] for ln in metrics.splitlines() if ln.startswith("forgetless_requests_total{")})
    disconnected = sum(v for ln in metrics.splitlines() if ln.startswith("forgetless_requests_total{") and 'status="499"' in ln
                       for v in [int(float(ln.split()[-1]))])  # fmt: skip
    checks = [
        ("valid requests answered 5xx or failed", valid_5xx, valid_5xx == 0),
        ("invalid requests not answered 4xx", invalid_not_4xx, invalid_not_4xx == 0),
        ("metric series before / after", f"{series_before} / {n_series}", n_series <= series_before + 150),
        ("endpoint label values", ", ".join(endpoints), len(endpoints) <= 7),
        ("cancelled requests counted (499)", disconnected, True),
        ("valid request afterwards (s)", f"{after_s:.2f} (HTTP {after.status_code})", after.status_code == 200 and after_s < 2.0),
    ]
    print(f"\nmodel {args.model}; {sent} / {args.requests} requests sent at concurrency {args.concurrency} in {wall:.1f} s "
          f"({sent / wall:.1f} req/s); max_tokens {args.max_tokens}")  # fmt: skip
    print(f"\n{'check':40} {'value':>30}  ok")
    for name, value, ok in checks:
        print(f"{name:40} {str(value):>30}  {'yes' if ok else 'NO'}")
    return 0 if all(ok for _, _, ok in checks) and sent == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
