"""The live drift monitor: KL of sampled adapter answers to the base, route shares, on a real server."""

from __future__ import annotations

import math
import re

import openai
import pytest
import torch
import yaml
from peft import PeftModel
from prometheus_client import CollectorRegistry

from forgetless import artifacts
from forgetless.errors import ForgetlessError
from forgetless.models import load_model
from forgetless.runfolder import read_run_folder
from forgetless.serve.app import ServeSettings, create_app
from forgetless.serve.deployment import EngineSettings
from forgetless.serve.monitor import DriftMonitor, answer_kl, run_kl_budget
from forgetless.serve.prompts import encode_chat
from forgetless.testing import tiny_tokenizer
from serve_helpers import API_KEY, DOMAIN, GENERAL, LoopbackServer, make_base, make_run


def _metric(text: str, name: str, labels: str = "") -> float:
    pat = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    m = re.search(r"^" + pat + r"$", text, re.M)
    assert m, f"{name}{{{labels}}} not exported"
    return float(m.group(1))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    base_dir = make_base(root / "base")
    run = make_run(root / "run", base_dir, seed=3)
    cfg = yaml.safe_load((run / artifacts.RESOLVED_CONFIG).read_text())
    cfg["budget"] = {"general_kl": 0.2}
    (run / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump(cfg))
    # Every adapter answer is scored, so the test can count them.
    settings = ServeSettings(api_key=API_KEY, max_tokens_limit=16, default_max_tokens=6,
                             engine=EngineSettings(reload_interval_s=60, monitor_sample_rate=1.0))  # fmt: skip
    app = create_app(lambda: run, settings)
    srv = LoopbackServer(app)
    url = srv.start()
    client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    yield {"client": client, "app": app, "run": run, "base_dir": base_dir}
    srv.stop()


def _send(env, prompts: list[str]) -> list[str]:
    routes = []
    for p in prompts:
        raw = env["client"].chat.completions.with_raw_response.create(
            model="forgetless-auto", messages=[{"role": "user", "content": p}], max_tokens=6
        )
        raw.parse()
        routes.append(raw.headers["x-forgetless-route"])
    return routes


def _scrape(env) -> str:
    env["app"].state.serve["dep"].monitor.drain()
    return env["app"].state.metrics.render().decode()


def test_kl_histogram_and_route_shares_follow_the_traffic(env):
    before = _scrape(env)
    assert _metric(before, "forgetless_drift_kl_per_token_count") == 0
    assert _metric(before, "forgetless_drift_kl_alert_threshold") == 0.2  # the run's budget.general_kl

    gen_routes = _send(env, GENERAL)
    after_gen = _scrape(env)
    n_ad = gen_routes.count("adapter")
    # Only adapter answers are scored: general traffic the router sent to the base adds none.
    assert _metric(after_gen, "forgetless_drift_kl_per_token_count") == n_ad
    assert _metric(after_gen, "forgetless_route_share", 'route="base"') == pytest.approx(gen_routes.count("base") / len(gen_routes))

    dom_routes = _send(env, DOMAIN * 2)
    after_dom = _scrape(env)
    n_ad += dom_routes.count("adapter")
    assert dom_routes.count("adapter") > gen_routes.count("adapter") / len(GENERAL) * len(DOMAIN)  # the router works
    assert _metric(after_dom, "forgetless_drift_kl_per_token_count") == n_ad
    assert _metric(after_dom, "forgetless_drift_samples_total", 'outcome="scored"') == n_ad
    # The adapter is random and non-zero: its answers differ from the base's, KL > 0.
    assert _metric(after_dom, "forgetless_drift_kl_per_token_sum") > 0
    all_routes = gen_routes + dom_routes
    assert _metric(after_dom, "forgetless_route_share", 'route="adapter"') == pytest.approx(all_routes.count("adapter") / len(all_routes))
    assert _metric(after_gen, "forgetless_route_share", 'route="adapter"') < _metric(after_dom, "forgetless_route_share", 'route="adapter"')
    assert not math.isnan(_metric(after_dom, "forgetless_router_margin_rolling", 'quantile="0.5"'))


def test_answer_kl_matches_two_separate_forward_passes(env):
    tok = tiny_tokenizer()
    model = PeftModel.from_pretrained(load_model(str(env["base_dir"])), str(env["run"] / artifacts.ADAPTER_DIR), adapter_name="a").eval()
    prompt = encode_chat(tok, [{"role": "user", "content": DOMAIN[0]}]).ids
    answer = prompt[1:5]
    got = answer_kl(model, "a", prompt, answer)
    with torch.no_grad():
        seq = torch.tensor([prompt + answer])
        ad = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
        with model.disable_adapter():
            base = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
    n = len(prompt)
    kls = [float((base[t].exp() * (base[t] - ad[t])).sum()) for t in range(n - 1, n - 1 + len(answer))]
    assert got == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert got > 0
    assert math.isnan(answer_kl(model, "a", prompt, []))


def test_monitor_drops_samples_it_cannot_keep_up_with():
    class Job:
        want, route, score = "adapter", "adapter", None
        prompt = type("P", (), {"ids": [1, 2]})()
        generated = [3]

    mon = DriftMonitor(CollectorRegistry(), sample_rate=1.0, max_pending=2)
    mon.stop()  # no thread drains the queue: the third sample must be dropped, not queued
    for _ in range(3):
        mon.observe(Job())
    assert len(mon._pending) == 2
    assert mon.samples.labels("dropped")._value.get() == 1


def test_run_kl_budget_reads_the_resolved_config(tmp_path):
    (tmp_path / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump({"budget": {"general_kl": 0.05}}))
    assert run_kl_budget(tmp_path) == 0.05
    assert run_kl_budget(read_run_folder(tmp_path)) == 0.05
    (tmp_path / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump({"budget": {"general_kl": None}}))
    assert run_kl_budget(tmp_path) is None
    # A config the run-folder reader rejects is an error, not a silently missing alert.
    (tmp_path / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump({"budget": {"general_kll": 0.05}}))
    with pytest.raises(ForgetlessError, match="general_kll"):
        run_kl_budget(tmp_path)
    with pytest.raises(ValueError, match="sample_rate"):
        DriftMonitor(CollectorRegistry(), sample_rate=1.5)
