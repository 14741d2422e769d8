"""`forgetless serve registry:ALIAS` serves the variant the alias points at (int8, GGUF), not the fp32 adapter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel

from forgetless import artifacts
from forgetless.deploy.export import export_gguf, gguf_path
from forgetless.deploy.gguf_export import load_gguf
from forgetless.deploy.int8_weight_only import Int8WeightOnlyLinear
from forgetless.deploy.quantize import quant_info_path, quantize_and_gate
from forgetless.deploy.variants import load_target_tokenizer, load_variant, resolve_target
from forgetless.errors import ForgetlessError
from forgetless.evaluate.scoring import generate_greedy
from forgetless.registry import Registry
from forgetless.registry.sample_run import make_run_folder
from forgetless.serve.app import ServeSettings, create_app
from forgetless.serve.cli import target_resolver
from forgetless.serve.deployment import Deployment, EngineSettings
from forgetless.serve.metrics import ServeMetrics

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "zorvanex treats"
N = 6


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(artifacts.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(artifacts.REGISTRY_ENV, str(tmp_path / "r.sqlite"))


def _settings() -> EngineSettings:
    # The app's poller must not swap behind the test's back: swaps happen on refresh(force=True) only.
    return EngineSettings(reload_interval_s=600, monitor_sample_rate=0.0)


def _deployment() -> Deployment:
    return Deployment(target_resolver("registry:prod"), ServeMetrics(), _settings())


def _greedy(model: torch.nn.Module, tok, text: str) -> str:  # noqa: ANN001 - a tokenizer
    out = generate_greedy(model, tok, [tok.encode(text)], max_new_tokens=N)[0]
    return tok.decode(out, skip_special_tokens=True)


def _complete(client: TestClient, model: str) -> tuple[int, dict, dict]:
    r = client.post("/v1/completions", headers=AUTH, json={"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0})
    return r.status_code, dict(r.headers), r.json()


def test_promoted_int8_variant_is_served_and_hot_swapped(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    assert quantize_and_gate(run).passed  # weight-only-bf16, the default scheme, recorded in quant_info.json
    reg = Registry()
    plain, _ = reg.register(run, "m")
    q, _ = reg.register(run, "m", variant="int8")
    reg.promote(plain.ref, "prod")
    dep = _deployment()
    app = create_app(target_resolver("registry:prod"), ServeSettings(api_key=KEY, engine=_settings()), deployment=dep)
    with TestClient(app) as client:
        assert isinstance(dep.engine.model, PeftModel)
        reg.promote(q.ref, "prod")
        assert dep.refresh(force=True)
        model = dep.engine.model
        assert not isinstance(model, PeftModel)  # merged, not base + fp32 adapter
        assert any(isinstance(m, Int8WeightOnlyLinear) for m in model.modules())
        assert not any(type(m) is torch.nn.Linear for m in model.modules())  # every Linear quantized, as the gate scored
        assert dep.variant == "int8" and dep.engine.router is None

        # The answer is the int8 model's own greedy continuation (built independently here).
        t = resolve_target(str(run))
        tok = load_target_tokenizer(t)
        want = _greedy(load_variant(t.in_fp32(), "int8", tok=tok), tok, PROMPT)
        for served_id in ("forgetless-auto", "forgetless-adapter"):
            status, headers, body = _complete(client, served_id)
            assert status == 200, body
            assert headers["x-forgetless-variant"] == "int8" and headers["x-forgetless-route"] == "variant"
            assert "x-forgetless-router-score" not in headers
            assert body["choices"][0]["text"] == want
        status, _, body = _complete(client, "forgetless-base")
        assert status == 404 and "merged int8 variant" in body["error"]["message"]
        cards = client.get("/v1/models", headers=AUTH).json()["data"]
        assert sorted(c["id"] for c in cards) == ["forgetless-adapter", "forgetless-auto"]
        assert {c["forgetless_variant"] for c in cards} == {"int8"} and all("routing off" in c["description"] for c in cards)

        # Rollback: the fp32 adapter with its base route is back, without a restart.
        reg.rollback("prod")
        assert dep.refresh(force=True)
        assert isinstance(dep.engine.model, PeftModel) and dep.variant == "adapter"
        status, headers, _ = _complete(client, "forgetless-base")
        assert status == 200 and headers["x-forgetless-variant"] == "adapter" and headers["x-forgetless-route"] == "base"
        assert len(client.get("/v1/models", headers=AUTH).json()["data"]) == 3
        assert not dep.refresh(force=True)  # nothing changed since: no swap


def test_tampered_or_missing_int8_artifact_is_refused(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run")
    assert quantize_and_gate(run).passed
    reg = Registry()
    plain, _ = reg.register(run, "m")
    q, _ = reg.register(run, "m", variant="int8")
    reg.promote(plain.ref, "prod")
    dep = _deployment()
    try:
        reg.promote(q.ref, "prod")
        info = quant_info_path(run.resolve())
        # Still valid JSON with the same verdict; only its bytes differ from what was registered.
        info.write_text(info.read_text() + "\n")
        assert not dep.refresh(force=True)
        assert isinstance(dep.engine.model, PeftModel)  # the last good version keeps serving, nothing else
        with pytest.raises(ForgetlessError, match=re.escape(str(info)) + " changed since it was registered"):
            _deployment()
        info.unlink()
        with pytest.raises(ForgetlessError, match=re.escape(str(info)) + " is missing"):
            _deployment()
        assert not dep.refresh(force=True) and isinstance(dep.engine.model, PeftModel)
    finally:
        dep.close()


def test_promoted_gguf_variant_is_served_from_its_file(tmp_path: Path) -> None:
    run = make_run_folder(tmp_path / "run", bpe=True)
    info = export_gguf(run, ["q8_0"])
    assert info["files"]["q8_0"]["verdict"] == "pass"
    reg = Registry()
    v, _ = reg.register(run, "m", variant="gguf-q8_0")
    reg.promote(v.ref, "prod")
    dep = _deployment()
    try:
        assert not isinstance(dep.engine.model, PeftModel) and dep.variant == "gguf-q8_0"
        gmodel, gtok = load_gguf(gguf_path(run, "q8_0"))
        # The served weights are the file's (q8_0 rounding included), not the fp32 merge.
        served = dict(dep.engine.model.named_parameters())
        assert all(torch.equal(p, served[n]) for n, p in gmodel.named_parameters())
        assert dep.engine.tok.chat_template == gtok.chat_template
    finally:
        dep.close()
    p = gguf_path(run.resolve(), "q8_0")
    with open(p, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ForgetlessError, match=re.escape(str(p)) + " changed since it was registered"):
        _deployment()
