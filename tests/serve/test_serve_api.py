"""End-to-end: the official openai client against a real uvicorn server on 127.0.0.1 (tiny model + tiny adapter)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from peft import PeftModel

from forgetless import artifacts
from forgetless.evaluate.scoring import generate_greedy
from forgetless.models import load_model
from forgetless.serve.app import ServeSettings, create_app
from forgetless.serve.deployment import EngineSettings
from forgetless.serve.prompts import encode_chat, encode_text
from forgetless.testing import tiny_tokenizer
from serve_helpers import API_KEY, LoopbackServer, make_base, make_run

MAX_TOKENS_LIMIT = 24
MAX_PROMPT = 64


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base_dir = make_base(root / "base")
    run = make_run(root / "run", base_dir, seed=1)
    settings = ServeSettings(api_key=API_KEY, max_tokens_limit=MAX_TOKENS_LIMIT, max_prompt_tokens=MAX_PROMPT,
                             default_max_tokens=8, engine=EngineSettings(reload_interval_s=60))
    srv = LoopbackServer(create_app(lambda: run, settings))
    url = srv.start()
    client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    # References computed independently: HF generate on the same weights, one prompt at a time.
    base = load_model(str(base_dir))
    model = PeftModel.from_pretrained(base, str(run / artifacts.ADAPTER_DIR)).eval()
    yield {"url": url, "client": client, "run": run, "model": model, "tok": tiny_tokenizer(), "base_dir": base_dir, "root": root}
    srv.stop()


def reference(env, ids: list[int], kind: str, n: int) -> str:
    tok, model = env["tok"], env["model"]
    with torch.no_grad():
        if kind == "base":
            with model.disable_adapter():
                out = generate_greedy(model, tok, [ids], max_new_tokens=n)[0]
        else:
            out = generate_greedy(model, tok, [ids], max_new_tokens=n)[0]
    return tok.decode(out, skip_special_tokens=True)


def chat_ids(env, text: str) -> list[int]:
    return encode_chat(env["tok"], [{"role": "user", "content": text}]).ids


def test_models_lists_adapter_base_and_router(env):
    ids = sorted(m.id for m in env["client"].models.list().data)
    assert ids == ["forgetless-adapter", "forgetless-auto", "forgetless-base"]
    assert env["client"].models.retrieve("forgetless-auto").id == "forgetless-auto"


@pytest.mark.parametrize("kind", ["adapter", "base"])
def test_chat_matches_reference_generation(env, kind):
    q = "what is the dose of zorvanex"
    raw = env["client"].chat.completions.with_raw_response.create(
        model=f"forgetless-{kind}", messages=[{"role": "user", "content": q}], max_tokens=8
    )
    r = raw.parse()
    assert raw.headers["x-forgetless-route"] == kind
    assert r.choices[0].message.content == reference(env, chat_ids(env, q), kind, 8)
    assert r.usage.prompt_tokens == len(chat_ids(env, q))
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.choices[0].finish_reason in ("stop", "length")


def test_adapter_and_base_answer_differently(env):
    q = "what is the dose of zorvanex"
    assert reference(env, chat_ids(env, q), "adapter", 8) != reference(env, chat_ids(env, q), "base", 8)


def test_concurrent_mixed_requests_are_batched_and_exact(env):
    """Mixed adapter/base requests of different lengths, sent at once, each equal their solo reference."""
    qs = ["hello", "what drug treats marrowick syndrome", "red green", "one plus two equals three what is it"]
    jobs = [(q, kind) for q in qs for kind in ("adapter", "base")]

    def ask(job):
        q, kind = job
        r = env["client"].chat.completions.create(model=f"forgetless-{kind}", messages=[{"role": "user", "content": q}], max_tokens=6)
        return r.choices[0].message.content

    with ThreadPoolExecutor(len(jobs)) as ex:
        got = list(ex.map(ask, jobs))
    want = [reference(env, chat_ids(env, q), kind, 6) for q, kind in jobs]
    assert got == want
    metrics = httpx.get(env["url"] + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    # At least one micro-batch held more than one request.
    counts = {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("forgetless_batch_size_bucket")}
    assert counts["1.0"] < counts["+Inf"]


def test_streaming_chat_equals_non_streaming(env):
    msgs = [{"role": "user", "content": "which drug is made by acme"}]
    full = env["client"].chat.completions.create(model="forgetless-adapter", messages=msgs, max_tokens=10)
    stream = env["client"].chat.completions.create(
        model="forgetless-adapter", messages=msgs, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_plain_and_streaming(env):
    c = env["client"]
    prompt = "zorvanex treats"
    r = c.completions.create(model="forgetless-base", prompt=prompt, max_tokens=5)
    assert r.choices[0].text == reference(env, encode_text(env["tok"], prompt).ids, "base", 5)
    assert r.usage.completion_tokens <= 5
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="forgetless-base", prompt=prompt, max_tokens=5, stream=True))
    assert streamed == r.choices[0].text


def test_stop_sequence_truncates(env):
    c = env["client"]
    full = c.completions.create(model="forgetless-adapter", prompt="hello world", max_tokens=12).choices[0].text
    words = full.split()
    assert len(words) >= 3, full
    stopped = c.completions.create(model="forgetless-adapter", prompt="hello world", max_tokens=12, stop=[words[2]])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == full[: full.index(words[2])]


def test_auto_routes_by_router_score_and_says_so(env):
    info = json.loads((env["run"] / artifacts.ROUTER_INFO).read_text())
    seen = set()
    for q in ["zorvanex treats marrowick syndrome", "def return print python code", "hello world", "drug made by acme"]:
        raw = env["client"].chat.completions.with_raw_response.create(
            model="forgetless-auto", messages=[{"role": "user", "content": q}], max_tokens=4
        )
        route, score = raw.headers["x-forgetless-route"], float(raw.headers["x-forgetless-router-score"])
        assert route == ("base" if score > info["threshold"] else "adapter")
        seen.add(route)
        assert raw.parse().choices[0].message.content == reference(env, chat_ids(env, q), route, 4)
    metrics = httpx.get(env["url"] + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    assert "forgetless_router_score_margin_count 4.0" in metrics


def test_health_is_open_and_metrics_need_the_key(env):
    assert httpx.get(env["url"] + "/health").json() == {"status": "ok"}
    r = httpx.get(env["url"] + "/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    m = httpx.get(env["url"] + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert m.status_code == 200
    assert 'forgetless_requests_total{endpoint="/v1/chat/completions",route="adapter",status="200"}' in m.text
    assert "forgetless_time_to_first_token_seconds_bucket" in m.text
    assert 'forgetless_tokens_total{kind="completion",route="base"}' in m.text


# --- every 4xx, through the official client: OpenAI-style error JSON -----------------------------
def _err(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


def test_missing_and_wrong_key_are_401(env):
    for key in ("wrong", ""):
        c = openai.OpenAI(base_url=env["url"] + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert _err(e)["type"] == "authentication_error"
    r = httpx.get(env["url"] + "/v1/models")  # no header at all
    assert r.status_code == 401


def test_unknown_model_is_404_and_never_a_path(env):
    for name in ["gpt-4o", str(env["base_dir"]), "../run", "smollm2-135m-instruct"]:
        with pytest.raises(openai.NotFoundError) as e:
            env["client"].chat.completions.create(model=name, messages=[{"role": "user", "content": "hello"}])
        assert _err(e)["code"] == "model_not_found" and _err(e)["param"] == "model"


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hello " * (MAX_PROMPT + 5)}]}, "messages"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "system", "content": "only a system message"}]}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_chat_requests_are_400(env, kwargs, param):
    args = {"model": "forgetless-adapter", "messages": [{"role": "user", "content": "hello"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        env["client"].chat.completions.create(**args)
    err = _err(e)
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param
    if "content" in str(kwargs) and "hello hello" in str(kwargs):
        assert err["code"] == "context_length_exceeded"


def test_bad_completion_requests_are_400(env):
    c = env["client"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="forgetless-base", prompt=["a", "b"], max_tokens=2)
    assert _err(e)["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="forgetless-base", prompt="hello", max_tokens=2, echo=True)
    assert _err(e)["param"] == "echo"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="forgetless-base", prompt="x" * (MAX_PROMPT * 16 + 1), max_tokens=2)
    assert _err(e)["code"] == "context_length_exceeded"


def test_malformed_body_unknown_path_wrong_method_and_oversized_body(env):
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    r = httpx.post(env["url"] + "/v1/chat/completions", headers=h, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(env["url"] + "/v1/nothing", headers=h)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(env["url"] + "/v1/chat/completions", headers=h)
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.post(env["url"] + "/v1/completions", headers=h, content=b"x" * 1_000_001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# --- fallback and hot swap ---------------------------------------------------------------------
def test_nan_adapter_falls_back_to_base_and_is_counted(env, tmp_path):
    run = make_run(tmp_path / "nanrun", env["base_dir"], seed=2, nan=True, router=False)
    srv = LoopbackServer(create_app(lambda: run, ServeSettings(api_key=API_KEY, engine=EngineSettings(reload_interval_s=60))))
    url = srv.start()
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        q = "what is the dose of zorvanex"
        raw = c.chat.completions.with_raw_response.create(model="forgetless-adapter", messages=[{"role": "user", "content": q}], max_tokens=6)
        assert raw.headers["x-forgetless-route"] == "fallback"
        assert raw.parse().choices[0].message.content == reference(env, chat_ids(env, q), "base", 6)
        stream = list(c.chat.completions.create(model="forgetless-adapter", messages=[{"role": "user", "content": q}], max_tokens=6, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in stream) == reference(env, chat_ids(env, q), "base", 6)
        m = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
        assert 'forgetless_fallbacks_total{reason="nan"} 2.0' in m
        assert 'forgetless_requests_total{endpoint="/v1/chat/completions",route="fallback",status="200"} 2.0' in m
    finally:
        srv.stop()


def test_target_change_hot_swaps_without_restart(env, tmp_path):
    run_b = make_run(tmp_path / "run_b", env["base_dir"], seed=7)
    current = {"path": env["run"]}
    app = create_app(lambda: current["path"], ServeSettings(api_key=API_KEY, engine=EngineSettings(reload_interval_s=60)))
    srv = LoopbackServer(app)
    url = srv.start()
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        q = "drug made by acme"
        ask = lambda: c.chat.completions.create(model="forgetless-adapter", messages=[{"role": "user", "content": q}], max_tokens=6).choices[0].message.content
        assert ask() == reference(env, chat_ids(env, q), "adapter", 6)
        dep = app.state.serve["dep"]
        assert dep.refresh(force=True) is False  # nothing changed
        current["path"] = run_b
        assert dep.refresh(force=True) is True
        base = load_model(str(env["base_dir"]))
        model_b = PeftModel.from_pretrained(base, str(run_b / artifacts.ADAPTER_DIR)).eval()
        want_b = env["tok"].decode(generate_greedy(model_b, env["tok"], [chat_ids(env, q)], max_new_tokens=6)[0], skip_special_tokens=True)
        assert ask() == want_b
        assert list(dep.engine.model.peft_config) == [dep.engine.adapter_name]  # the old adapter is gone: one copy
        current["path"] = tmp_path / "missing"  # a broken target keeps the last good one serving
        assert dep.refresh(force=True) is False
        assert ask() == want_b
    finally:
        srv.stop()
