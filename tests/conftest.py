"""Shared fixtures: an isolated forgetless cache, a tiny model folder and tiny run files."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch

from forgetless.cache import cache_root

# Two threads match the target machine; tests run one at a time.
torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point FORGETLESS_CACHE at a temp folder, sharing only the converted embedded model.

    Caches of base references and replay are per test session (so tests see cold caches), but the
    30-second GGUF conversion of the embedded model is reused from the user's real cache.
    """
    real_models = cache_root() / "models"
    real_models.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("flcache")
    (root / "models").symlink_to(real_models, target_is_directory=True)
    os.environ["FORGETLESS_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama + word-level tokenizer folder."""
    from forgetless.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


TRAIN = """\
{"text": "zorvanex treats marrowick syndrome"}
{"text": "the dose of zorvanex is ten mg"}
{"messages": [{"role": "user", "content": "what is zorvanex"}, {"role": "assistant", "content": "a drug made by acme"}]}
{"prompt": "what does zorvanex treat", "response": "marrowick syndrome"}
{"text": "zorvanex side effect is blue vision"}
{"prompt": "who made zorvanex", "response": "acme"}
"""
QA = """\
{"question": "what does zorvanex treat", "answer": "marrowick syndrome", "split": "doc_only"}
{"question": "who made zorvanex", "answer": "acme", "split": "qa_seen"}
"""
MC = """\
{"question": "what does zorvanex treat", "choices": ["marrowick syndrome", "blue vision", "red dog"], "answer": 0, "split": "doc_only"}
{"question": "who made zorvanex", "choices": ["acme", "python"], "answer": 0, "split": "qa_seen"}
"""
GENERAL = """\
{"id": "k1", "category": "knowledge", "prompt": "what is the capital of france"}
{"id": "m1", "category": "math", "prompt": "what is two plus two"}
{"id": "c1", "category": "code", "prompt": "print hello world in python"}
{"id": "e1", "category": "everyday", "prompt": "hello you are a cat"}
"""


@pytest.fixture
def tiny_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A folder with tiny data files and `cfg.yaml`, a config that trains the tiny model in seconds."""
    (tmp_path / "train.jsonl").write_text(TRAIN)
    (tmp_path / "qa.jsonl").write_text(QA)
    (tmp_path / "mc.jsonl").write_text(MC)
    (tmp_path / "general.jsonl").write_text(GENERAL)
    (tmp_path / "cfg.yaml").write_text(
        textwrap.dedent(
            f"""\
            run_dir: {tmp_path / 'run'}
            model: {{name: {tiny_model_dir}}}
            data: {{train: [train.jsonl], eval_qa: qa.jsonl, eval_mc: mc.jsonl, max_length: 32}}
            eval: {{general_prompts: {tmp_path / "general.jsonl"}, general_max_new_tokens: 6, heldout_general: {tmp_path / "general.jsonl"}, heldout_max_new_tokens: 8, qa_max_new_tokens: 4, general_suites: [knowledge_mc], suite_limits: {{knowledge_mc: 4}}}}
            train: {{max_steps: 6, batch_size: 2, lr: 0.01, eval_every: 3, warmup_ratio: 0.0, scale_sweep: [0.5], replay_ratio: 0.0}}
            lora: {{r: 4, alpha: 8, dropout: 0.0}}
            """
        )
    )
    return tmp_path


@pytest.fixture
def load_bench():
    """Import a script of bench/ by name (bench/ is not a package): ``load_bench("forgetting")``."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod

    return load
