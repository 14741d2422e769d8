"""A hostile or careless client cannot hurt another: limits, cancellation, queue wait, bounded metrics, fuzzed bodies."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgetless.serve.app import ServeSettings, create_app
from forgetless.serve.deployment import EngineSettings
from serve_helpers import API_KEY, LoopbackServer, make_base, make_run

H = {"Authorization": f"Bearer {API_KEY}"}
QUEUE_WAIT_S = 1.5
STEP_DELAY_S = 0.02


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    run = make_run(root / "run", make_base(root / "base"), seed=1, router=False)
    settings = ServeSettings(api_key=API_KEY, max_tokens_limit=400, max_prompt_tokens=64, default_max_tokens=4,
                             max_body_bytes=100_000, max_queue_wait_s=QUEUE_WAIT_S,
                             engine=EngineSettings(max_batch=1, reload_interval_s=60))  # fmt: skip
    app = create_app(lambda: run, settings)
    server = LoopbackServer(app)
    url = server.start()
    engine = app.state.serve["dep"].engine
    real_forward = engine.model.forward
    slow = {"on": False, "calls": 0}
    eos = engine.tok.eos_token_id

    def forward(*args, **kwargs):
        # Slow mode: every decode step takes STEP_DELAY_S and never ends on EOS, so a long request
        # really runs for max_tokens steps unless something stops it.
        out = real_forward(*args, **kwargs)
        if slow["on"]:
            slow["calls"] += 1
            time.sleep(STEP_DELAY_S)
            out.logits[..., eos] = -1e9  # finite: -inf would look like a broken adapter (NaN/inf check)
        return out

    engine.model.forward = forward
    yield {"url": url, "slow": slow, "app": app}
    slow["on"] = False
    server.stop()


def _metrics(url: str) -> str:
    return httpx.get(url + "/metrics", headers=H).text


def _series(url: str, name: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in _metrics(url).splitlines() if line.startswith(name + "{")}


def _count(url: str, endpoint: str, status: str) -> float:
    return sum(v for k, v in _series(url, "forgetless_requests_total").items()
               if f'endpoint="{endpoint}"' in k and f'status="{status}"' in k)  # fmt: skip


def _chat(**extra) -> dict:
    return {"model": "forgetless-adapter", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, **extra}


def test_hostile_seed_is_a_400_naming_seed(srv):
    for seed in (2**70, -(2**64)):
        r = httpx.post(srv["url"] + "/v1/chat/completions", headers=H, json=_chat(seed=seed, temperature=1.0))
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    r = httpx.post(srv["url"] + "/v1/chat/completions", headers=H, json=_chat(seed=2**64 - 1, temperature=1.0))
    assert r.status_code == 200


def test_chunked_body_over_the_limit_is_413(srv):
    def body():
        for _ in range(30):  # 3 MB, no Content-Length: the limit must count the bytes read
            yield b"x" * 100_000

    r = httpx.post(srv["url"] + "/v1/completions", headers={**H, "Content-Type": "application/json"}, content=body())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # A chunked body under the limit still works.
    small = json.dumps({"model": "forgetless-base", "prompt": "hello", "max_tokens": 2}).encode()
    r = httpx.post(srv["url"] + "/v1/completions", headers={**H, "Content-Type": "application/json"}, content=iter([small[:10], small[10:]]))
    assert r.status_code == 200, r.text


def test_unknown_paths_share_one_metric_series(srv):
    for i in range(20):
        assert httpx.get(srv["url"] + f"/probe-{i}").status_code == 401
        assert httpx.get(srv["url"] + f"/v1/nothing-{i}", headers=H).status_code == 404
    endpoints = {k.split('endpoint="')[1].split('"')[0] for k in _series(srv["url"], "forgetless_requests_total")}
    assert not any("probe" in e or "nothing" in e for e in endpoints)
    assert _count(srv["url"], "other", "401") >= 20 and _count(srv["url"], "other", "404") >= 20


def test_4xx_answers_are_counted(srv):
    url = srv["url"]
    before = {s: _count(url, "/v1/chat/completions", s) for s in ("400", "404", "413")}
    httpx.post(url + "/v1/chat/completions", headers=H, content=b"{not json")
    httpx.post(url + "/v1/chat/completions", headers=H, json=_chat(model="gpt-4o"))
    httpx.post(url + "/v1/chat/completions", headers=H, content=b"x" * 100_001)
    after = {s: _count(url, "/v1/chat/completions", s) for s in ("400", "404", "413")}
    assert {s: after[s] - before[s] for s in after} == {"400": 1, "404": 1, "413": 1}


def _wait_for(pred, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_client_that_disconnects_stops_its_generation(srv):
    url, slow = srv["url"], srv["slow"]
    slow["on"], slow["calls"] = True, 0
    try:
        for stream in (False, True):
            before = _count(url, "/v1/chat/completions", "499")
            calls0 = slow["calls"]
            if stream:  # reads the first chunk, then goes away
                with httpx.stream("POST", url + "/v1/chat/completions", headers=H, json=_chat(max_tokens=400, stream=True)) as r:
                    next(r.iter_bytes())
            else:  # gives up waiting for the whole answer
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(url + "/v1/chat/completions", headers=H, json=_chat(max_tokens=400), timeout=httpx.Timeout(30, read=0.5))
            _wait_for(lambda: _count(url, "/v1/chat/completions", "499") == before + 1)
            time.sleep(0.3)  # any step in flight finishes
            ran = slow["calls"] - calls0
            time.sleep(0.3)
            assert slow["calls"] - calls0 == ran, "generation went on after the client left"
            assert ran < 200  # far fewer than the 400 steps it asked for
    finally:
        slow["on"] = False


def test_a_request_stuck_behind_a_long_batch_gets_503_with_retry_after(srv):
    url, slow = srv["url"], srv["slow"]
    slow["on"], slow["calls"] = True, 0
    try:
        long_done: dict = {}

        def long_request():
            try:
                long_done["r"] = httpx.post(url + "/v1/chat/completions", headers=H, json=_chat(max_tokens=400), timeout=2 * QUEUE_WAIT_S)
            except httpx.ReadTimeout:
                long_done["r"] = None  # leaves; its generation is cancelled

        t = threading.Thread(target=long_request)
        t.start()
        _wait_for(lambda: slow["calls"] > 0)
        r = httpx.post(url + "/v1/chat/completions", headers=H, json=_chat(max_tokens=2), timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout"
        assert int(r.headers["retry-after"]) >= 1
        t.join(30)
    finally:
        slow["on"] = False
    _wait_for(lambda: httpx.post(url + "/v1/chat/completions", headers=H, json=_chat(), timeout=30).status_code == 200)
    assert _count(url, "/v1/chat/completions", "503") >= 1


# --- fuzzed request bodies: never a 5xx, every error OpenAI-style JSON --------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))  # fmt: skip
_values = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                       max_leaves=8)  # fmt: skip
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", ""]),
                                  "content": st.one_of(st.text(max_size=30), _values)})  # fmt: skip
_fields = {
    "model": st.one_of(st.sampled_from(["forgetless-adapter", "forgetless-base", "forgetless-auto"]), _values),
    "messages": st.one_of(st.lists(_message, max_size=3), _values),
    "prompt": st.one_of(st.text(max_size=30), st.lists(st.text(max_size=10), max_size=2), _values),
    "max_tokens": st.one_of(st.integers(min_value=-3, max_value=3), _values),
    "temperature": st.one_of(st.floats(min_value=0, max_value=2), _values),
    "top_p": st.one_of(st.floats(min_value=0, max_value=1), _values),
    "seed": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), _values),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=6), _values),
    "stream": st.one_of(st.booleans(), _values),
    "n": st.one_of(st.integers(min_value=-1, max_value=3), _values),
    "logprobs": _values,
    "stream_options": _values,
}
_bodies = st.fixed_dictionaries({}, optional=_fields)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), body=_bodies)
def test_fuzzed_bodies_never_get_a_5xx(srv, path, body):
    try:
        content = json.dumps(body, allow_nan=True).encode()
    except ValueError:
        return
    with httpx.Client(timeout=30) as c:
        r = c.post(srv["url"] + path, headers={**H, "Content-Type": "application/json"}, content=content)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
    elif not body.get("stream"):
        assert r.json()["choices"]
