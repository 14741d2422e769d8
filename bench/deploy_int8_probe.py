"""Teacher-forced KL to base on the first N general prompts: int8 weights alone vs dynamic int8 (weights + activations).

Separates the two error sources of int8: fake-quantized weights (one scale per output row,
activations fp32) against torch's dynamic quantization with per-channel weights (activations
quantized per tensor at run time), with and without the LM head in fp32. Uses the run's fp32 base
reference (computed and cached by `forgetless quantize`).

    PYTHONPATH=src .venv/bin/python bench/deploy_int8_probe.py 16     # on /tmp/i21noop/run (bench/deploy_noop_run.py)
"""
import copy, dataclasses, time, warnings, sys
warnings.simplefilter("ignore")
import torch
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from forgetless.config import load_config
from forgetless.evaluate.drift import cached_reference, general_drift, load_general_prompts
from forgetless.models import load_model, load_tokenizer, tokenizer_fingerprint, weights_fingerprint
N = int(sys.argv[1])
cfg = load_config("/tmp/i21noop/run/config.resolved.yaml")
tok = load_tokenizer(cfg.model.name)
base = load_model(cfg.model.name, dtype="float32")
prompts = load_general_prompts(cfg.eval.general_prompts, cfg.eval.general_limit)
ref, _, cached = cached_reference(base, tok, prompts, base_fingerprint=weights_fingerprint(cfg.model.name), tokenizer_fingerprint=tokenizer_fingerprint(tok),
    max_new_tokens=cfg.eval.general_max_new_tokens, topk=cfg.eval.kl_topk, batch_size=cfg.eval.batch_size, system_prompt=cfg.data.system_prompt)
print("cached", cached, flush=True)
f = {fl.name: getattr(ref, fl.name) for fl in dataclasses.fields(ref)}
sl = {k: (v[:N] if isinstance(v, list) else v) for k, v in f.items()}
ref = type(ref)(**sl)
names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)]
def q(skip):
    spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
    for n in names:
        if any(s in n for s in skip): spec[n] = None
    return quantize_dynamic(copy.deepcopy(base), spec, dtype=torch.qint8)
def wonly():
    m = copy.deepcopy(base)
    with torch.no_grad():
        for n, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight; s = w.abs().amax(1, keepdim=True) / 127
                mod.weight = torch.nn.Parameter((w / s).round().clamp(-127, 127) * s)
    return m
pad = tok.pad_token_id or 0
for label, build in [("fp32", lambda: base), ("weight-only per-channel (fake quant)", wonly), ("dyn per-channel all", lambda: q([])), ("dyn per-channel, lm_head fp32", lambda: q(["lm_head"])),
                     ("dyn per-channel, down_proj fp32", lambda: q(["down_proj"])), ("dyn per-channel, down_proj+lm_head fp32", lambda: q(["down_proj", "lm_head"]))]:
    t = time.time(); m = build(); d = general_drift(m, ref, batch_size=16, pad_id=pad)
    print(f"| {label} | {d.kl:.4f} | {d.nll:.4f} | {time.time()-t:.0f}s |", flush=True)
