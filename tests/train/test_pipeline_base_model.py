"""The whole pipeline on a tiny *base* model without a chat template (Gemma 3 architecture), as
the embedded gemma3-270m runs it: plain-frame replay and evaluation, LoRA on Gemma's layers,
then the deploy stages (quality gate, registry, server, bench) on its run."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.deploy.bench import run_bench
from forgetless.deploy.quantize import quant_info_path, quantize_and_gate
from forgetless.evaluate.scoring import generate_greedy
from forgetless.models import load_model, load_tokenizer
from forgetless.pipeline import run_pipeline
from forgetless.promptformat import PLAIN, cut_at_stop, prompt_format
from forgetless.registry import Registry
from forgetless.serve.app import ServeSettings, create_app
from forgetless.serve.deployment import EngineSettings
from forgetless.serve.prompts import encode_chat
from forgetless.testing import save_tiny_base_model


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_base_model(tmp_path_factory.mktemp("tiny-gemma3"))


def test_base_model_run_end_to_end(tiny_run: Path, base_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline on a template-less base model, then every deploy stage: the int8 quality gate
    scores it in the plain frame, the registry records it and its int8 variant, the server answers
    the official openai client's chat request in the plain frame (cut where the frame's next turn
    starts) exactly as the adapter generates it, and the deploy bench runs it."""
    monkeypatch.setenv(A.REGISTRY_ENV, str(tiny_run / "registry.sqlite"))
    # Replay on (self-generated, so chat records in the plain frame) with KL to the base.
    cfg = load_config(tiny_run / "cfg.yaml", [f"model.name={base_model_dir}", "train.replay_ratio=0.3", "train.kl_to_base=1.0", "budget.general_kl=5"])
    summary = run_pipeline(cfg)
    run = cfg.run_dir
    tok = load_tokenizer(str(base_model_dir))
    assert tok.chat_template is None and prompt_format(tok) == PLAIN
    info = json.loads((run / A.RUN_INFO).read_text())
    assert info["prompt_format"] == "plain"
    assert info["dataset"]["replay_rows"] > 0
    history = [json.loads(l) for l in (run / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 3, 6]
    for h in history:  # both suites at every checkpoint
        for key in ("general/kl", "general/nll", "domain/qa_f1", "domain/mc_acc", "domain/ppl"):
            assert key in h, (h["step"], key)
    assert history[0]["general/kl"] == pytest.approx(0.0, abs=1e-6) and history[-1]["general/kl"] > 0
    # LoRA sits on Gemma's linear layers (sliding-window and full-attention layers alike); its
    # q_norm / k_norm are RMSNorms, not adapted, and the export is plain PEFT.
    adapter_cfg = json.loads((run / A.ADAPTER_DIR / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    peft_model = PeftModel.from_pretrained(load_model(str(base_model_dir)), str(run / A.ADAPTER_DIR))
    adapted = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    for i in (0, 1):  # layer 0 slides, layer 1 attends to everything
        assert any(a.endswith(f"layers.{i}.self_attn.q_proj") for a in adapted) and any(a.endswith(f"layers.{i}.mlp.down_proj") for a in adapted)
    assert not any("norm" in a for a in adapted)
    assert summary["router"] is not None and summary["router"]["threshold"] is not None

    gate = quantize_and_gate(run)
    quant = json.loads(quant_info_path(run).read_text())
    assert quant["passed"] == gate.passed and quant["general"]["prompts"] > 0 and quant["domain"]["qa_items"] > 0
    assert all(isinstance(quant["general"][k], float) for k in ("kl_fp32", "kl_int8"))

    reg = Registry()
    version, created = reg.register(run, "tiny-base")
    assert created and version.base_model == str(base_model_dir) and version.budget_general_kl == 5
    assert version.selected_step is not None and "general/kl" in version.scores and version.adapter_sha256
    variant, _ = reg.register(run, "tiny-base", variant="int8")
    assert variant.gate_pass == gate.passed

    messages = [{"role": "user", "content": "what does zorvanex treat"}]
    ids = encode_chat(tok, messages).ids
    framed = tok.decode(ids, skip_special_tokens=True)
    assert framed.strip().startswith("Question: what") and framed.rstrip().endswith("Answer:")  # the plain frame
    with torch.no_grad():
        expected = cut_at_stop(tok.decode(generate_greedy(peft_model.eval(), tok, [ids], max_new_tokens=8)[0], skip_special_tokens=True))
    app = create_app(lambda: run, ServeSettings(api_key="k", engine=EngineSettings(reload_interval_s=600, monitor_sample_rate=0.0)))
    with TestClient(app) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)
        reply = client.chat.completions.create(model="forgetless-adapter", messages=messages, max_tokens=8, temperature=0)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].message.content == expected

    bench = run_bench(str(run), ["adapter", "int8"], concurrency=[1], max_new_tokens=4, repeats=1, device="cpu")
    assert [r["variant"] for r in bench["results"]] == ["adapter", "int8"]
    assert all(row["tokens_per_s"] > 0 for r in bench["results"] for row in r["rows"]), bench
