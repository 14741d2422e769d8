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
MODEL_DIR = "model"  # full fine-tuning baseline only: the whole model (safetensors)
# --- later stages (each written only when its stage runs) ---------------------------------------
CURATE_DIR = "curate"  # curated.jsonl, rejects.jsonl, report.md, report.json
TOKENS_DIR = "tokens"  # fertility analysis and extended-vocabulary exports
ROUTER = "router.safetensors"  # out-of-domain router statistics (serve)
ROUTER_INFO = "router.json"  # router threshold and calibration AUROC
SCALE_CURVE = "scale_curve.json"  # adapter-scale calibration sweep
# --- `forgetless demo`: one folder holding both arms' run folders --------------------------------
DEMO_COMPARISON_PNG = "comparison.png"  # both arms' checkpoints: general KL against domain QA recall

# --- inside the user cache (not the run folder) --------------------------------------------------
CACHE_ENV = "FORGETLESS_CACHE"  # overrides the cache root (default: ~/.cache/forgetless)

# --- deploy and registry ------------------------------------------------------------------------
DEPLOY_DIR = "deploy"  # inside a run folder: bench, quantization and distillation outputs
BENCH_JSON = "bench.json"  # `forgetless bench` results (inside DEPLOY_DIR)
QUANT_DIR = "int8"  # quantized model (inside DEPLOY_DIR): weights + quant_info.json
QUANT_INFO = "quant_info.json"  # quality-gate outcome of a quantized artifact
REPORT_HTML = "report.html"  # offline HTML report of the run (images embedded as data URIs)
REGISTRY_ENV = "FORGETLESS_REGISTRY"  # overrides the registry database path
REGISTRY_DB = "registry.sqlite"  # default registry database, in the user cache root

# --- curate: inside CURATE_DIR, or the folder given to `forgetless curate -o` ----------
CURATED = "curated.jsonl"  # kept records, cleaned (+ replay records marked "replay": true)
CURATE_REJECTS = "rejects.jsonl"  # every dropped record: reason, detail, source, duplicate_of, original
CURATE_REPORT_MD = "report.md"  # human-readable curate report: counts, cleaning, dedup, diversity
CURATE_REPORT_JSON = "report.json"  # the same report, machine-readable; counts add up
REPLAY_CACHE_DIR = "replay"  # cache sub-folder: base model's own answers to replay prompts

# --- tokens stage: inside TOKENS_DIR of a run, or a `forgetless tokens ...` --out folder --
TOKENS_FERTILITY_JSON = "fertility.json"  # `tokens analyze`: fertility domain vs general, top terms, saving
TOKENS_FERTILITY_MD = "fertility.md"  # the same as a Markdown report
TOKENS_INFO = "tokens.json"  # terms added, new ids, pieces each row was initialised from, step-0 checks
TOKENS_EXPORT_DIR = "export"  # what export_extended writes (the four names below + README.md)
TOKENS_EXTENDED_BASE_DIR = "extended_base"  # base + resized vocabulary with trained rows baked in
TOKENS_PLAIN_ADAPTER_DIR = "adapter"  # plain LoRA adapter for extended_base (no embedding deltas)
TOKENS_MERGED_DIR = "merged"  # adapter and new rows merged into one model
TOKENS_EXPORT_INFO = "export.json"  # which folder is which, and how to serve each
TOKENS_EXPORT_README = "README.md"

# --- `forgetless eval` (the evaluate suites) ----------------------------------------------------
EVAL_JSON = "eval.json"  # written into --out: every model's scores (value, n, 95% CI) and deltas
