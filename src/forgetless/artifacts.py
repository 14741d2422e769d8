"""Every file name a run folder can hold, in one place.

A run folder describes itself: anyone can open it and find the resolved config, the versions and
hashes it ran with, the metrics at every checkpoint, the plot, the adapter and the report. Code
never spells these names inline; tests assert the exact set a run writes.
"""

from __future__ import annotations

# --- describing the run -------------------------------------------------------------------------
RESOLVED_CONFIG = "config.resolved.yaml"  # the config after defaults and overrides
RUN_INFO = "run_info.json"  # library versions, hashes of base weights, tokenizer, data; timings
# --- training and evaluation -------------------------------------------------------------------
METRICS = "metrics.jsonl"  # one line per evaluation (step 0 = base) with both suites
CHECKPOINTS_DIR = "checkpoints"  # HF Trainer checkpoints: adapter + optimizer + scheduler + RNG
CHECKPOINT_COMPLETE = "COMPLETE"  # written last inside a checkpoint; a checkpoint without it is never loaded
TENSORBOARD_DIR = "tensorboard"
CURVES_PNG = "curves.png"  # domain and general curves against steps
REPORT_MD = "report.md"  # domain gain and general drift per checkpoint, verdict
SUMMARY = "summary.json"  # machine-readable outcome: selected checkpoint, scale, budget verdict
ADAPTER_DIR = "adapter"  # final adapter, standard PEFT layout (adapter_config.json + safetensors)
# --- later stages (each written only when its stage runs) ---------------------------------------
CURATE_DIR = "curate"  # curated.jsonl, rejects.jsonl, report.md, report.json
TOKENS_DIR = "tokens"  # fertility analysis and extended-vocabulary exports
ROUTER = "router.safetensors"  # out-of-domain router statistics (serve)
ROUTER_INFO = "router.json"  # router threshold and calibration AUROC
SCALE_CURVE = "scale_curve.json"  # adapter-scale calibration sweep

# --- inside the user cache (not the run folder) --------------------------------------------------
CACHE_ENV = "FORGETLESS_CACHE"  # overrides the cache root (default: ~/.cache/forgetless)
