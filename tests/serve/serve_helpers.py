"""Shared helpers for the serve tests: tiny run folders and a real uvicorn server on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
import uvicorn
import yaml
from peft import LoraConfig, get_peft_model

from forgetless import artifacts
from forgetless.models import load_model
from forgetless.serve.router import calibrate_router
from forgetless.testing import save_tiny_model, tiny_tokenizer

API_KEY = "test-key-123"
DOMAIN = [
    "what drug treats marrowick syndrome",
    "zorvanex dose mg",
    "which drug is made by acme",
    "side effect of zorvanex is blue vision",
    "zorvanex treats marrowick syndrome",
    "what is the dose of zorvanex in mg",
    "drug made by acme treats marrowick syndrome",
    "is blue vision a side effect of the drug",
]
GENERAL = [
    "what is the capital of france",
    "one plus two equals three",
    "def return print python code",
    "hello world",
    "red green cat dog",
    "four minus one equals three",
]


def make_run(folder: Path, base_dir: Path, *, seed: int, nan: bool = False, router: bool = True) -> Path:
    """A run folder with a random (non-zero) LoRA adapter on the tiny base, and a calibrated router."""
    folder.mkdir(parents=True, exist_ok=True)
    base = load_model(str(base_dir))
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_lora_weights=False)
    pm = get_peft_model(base, cfg)
    if nan:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.fill_(float("nan"))
    pm.save_pretrained(folder / artifacts.ADAPTER_DIR)
    (folder / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump({"model": {"name": str(base_dir), "dtype": "float32"}}))
    if router:
        calibrate_router(pm, tiny_tokenizer(), DOMAIN, GENERAL, folder, target_domain_to_base=0.1)
    return folder


def make_base(folder: Path) -> Path:
    """The tiny base model folder."""
    return save_tiny_model(folder, seed=0)


class LoopbackServer:
    """uvicorn on 127.0.0.1 with an ephemeral port, in a thread; stop() shuts it down."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 60.0) -> str:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > timeout or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
