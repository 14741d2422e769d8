"""Read what a run folder says about itself: lineage hashes, both suites' scores and the budget verdict.

The registry never trusts a name: every field here is a content hash or a number read from the
run folder's own files (``run_info.json``, ``config.resolved.yaml``, ``summary.json``,
``metrics.jsonl``, ``adapter/``). Where ``run_info.json`` lacks a hash (an older run, or a run
folder assembled by hand) the hash is computed from the files the resolved config names.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__, artifacts
from ..errors import InputError
from ..hashing import sha256_files, sha256_json
from ..io import iter_jsonl, read_text_file

# The metrics the training stage ranks checkpoints by, in order (higher is better): the registry
# judges the domain suite by the same metric the run selected its checkpoint by.
from ..train.select import PRIMARY_DOMAIN  # noqa: E402

# Metric names whose value should go DOWN when the model gets better (everything else goes up).
_LOWER_IS_BETTER = ("ppl", "perplexity", "loss", "nll", "kl")

# Keys under which run_info.json may hold each lineage hash, tried in order (the pipeline writes
# one of these; accepting a few spellings keeps older run folders registrable).
_RUN_INFO_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "base_sha256": (("hashes", "base_weights"), ("hashes", "weights"), ("base_weights_sha256",), ("weights_sha256",), ("base_sha256",)),
    "tokenizer_sha256": (("hashes", "tokenizer"), ("tokenizer_sha256",), ("tokenizer_fingerprint",)),
    "data_sha256": (("hashes", "data"), ("data_sha256",), ("hashes", "train_data")),
    "code_version": (("code_version",), ("forgetless_version",), ("versions", "forgetless"), ("git_commit",)),
}


@dataclass
class RunRecord:
    """Everything the registry stores about one run folder."""

    run_dir: str
    base_model: str
    adapter_sha256: str
    base_sha256: str
    tokenizer_sha256: str
    data_sha256: str
    config_sha256: str
    code_version: str
    selected_step: int | None
    scores: dict[str, float] = field(default_factory=dict)  # selected step: "domain/..." and "general/..."
    base_scores: dict[str, float] = field(default_factory=dict)  # step 0 (the base model)
    budget_general_kl: float | None = None
    domain_pass: bool = False
    general_pass: bool = False
    reasons: list[str] = field(default_factory=list)  # why a suite failed, one line each

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _load_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", file=path, line=e.lineno) from None
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", file=path)
    return obj


def adapter_hash(adapter_dir: Path) -> str:
    """Content hash of an adapter folder: every file's name and SHA-256 (sorted)."""
    files = [p for p in adapter_dir.rglob("*") if p.is_file()]
    if not files:
        raise InputError("adapter folder is empty", file=adapter_dir)
    return sha256_files(files)


def lower_is_better(metric: str) -> bool:
    """True for metrics such as perplexity or KL, where a smaller value is the better one."""
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(tag in leaf for tag in _LOWER_IS_BETTER)


def _numeric(rec: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in rec.items()
        if k.startswith(("domain/", "general/")) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All evaluation lines of ``metrics.jsonl`` (each has an integer ``step``), in file order."""
    path = run_dir / artifacts.METRICS
    rows = []
    for line, rec in iter_jsonl(path):
        if not isinstance(rec.get("step"), int):
            raise InputError("missing integer 'step'", file=path, line=line, field="step")
        rows.append(rec)
    return rows


def _selected_step(summary: dict[str, Any], rows: list[dict[str, Any]], run_dir: Path) -> int:
    for key in ("selected_step", "best_step", "step"):
        v = summary.get(key)
        if isinstance(v, int):
            return v
    if "selected" in summary and summary["selected"] is None:
        raise InputError(
            f"the run selected no checkpoint ({summary.get('verdict', 'no verdict')}): there is no tuned model to register",
            file=run_dir / artifacts.SUMMARY,
        )
    sel = summary.get("selected_checkpoint") or summary.get("selected")
    if isinstance(sel, dict) and isinstance(sel.get("step"), int):
        return sel["step"]
    if isinstance(sel, str) and sel.rsplit("-", 1)[-1].isdigit():
        return int(sel.rsplit("-", 1)[-1])
    # No selection recorded: the last evaluation is what the adapter folder holds.
    return rows[-1]["step"]


def judge_suites(
    scores: dict[str, float], base_scores: dict[str, float], budget_general_kl: float | None
) -> tuple[bool, bool, list[str]]:
    """Pass/fail for both suites from the selected step's scores against step 0 (the base).

    * general passes when ``general/kl`` is within the budget (no budget: it passes, as the config says
      "no limit"); a budget with no measured KL fails, because nothing proves it was kept.
    * domain passes when the primary domain metric -- the one the training stage ranks checkpoints
      by (:data:`PRIMARY_DOMAIN`, else perplexity) -- is strictly better than the base's.
    """
    reasons: list[str] = []
    kl = scores.get("general/kl")
    if budget_general_kl is None:
        general_ok = True
    elif kl is None:
        general_ok = False
        reasons.append(f"general: budget general_kl={budget_general_kl} but no general/kl was measured")
    else:
        general_ok = kl <= budget_general_kl
        if not general_ok:
            reasons.append(f"general: general/kl={kl:.4g} exceeds budget {budget_general_kl:.4g}")
    primary = next((m for m in (*PRIMARY_DOMAIN, "domain/ppl") if m in scores and m in base_scores), None)
    if primary is None:
        reasons.append("domain: no primary domain metric measured at both step 0 and the selected step")
        return False, general_ok, reasons
    delta = scores[primary] - base_scores[primary]
    domain_ok = (-delta if lower_is_better(primary) else delta) > 0
    if not domain_ok:
        reasons.append(f"domain: {primary} did not improve on the base ({base_scores[primary]:.4g} -> {scores[primary]:.4g})")
    return domain_ok, general_ok, reasons


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a finished run folder into a :class:`RunRecord`; raises :class:`InputError` naming the bad file."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise InputError("run folder not found", file=run_dir)
    cfg_path = run_dir / artifacts.RESOLVED_CONFIG
    try:
        cfg = yaml.safe_load(read_text_file(cfg_path))
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML: {e}", file=cfg_path) from None
    if not isinstance(cfg, dict):
        raise InputError("expected a mapping of config sections", file=cfg_path)
    info_path = run_dir / artifacts.RUN_INFO
    info = _load_json(info_path) if info_path.exists() else {}
    summary = _load_json(run_dir / artifacts.SUMMARY)
    rows = read_metrics(run_dir)
    adapter = run_dir / artifacts.ADAPTER_DIR
    if not (adapter / "adapter_config.json").exists():
        raise InputError("no adapter_config.json: the run has no final adapter", file=adapter)

    base_model = _dig(cfg, ("model", "name"))
    if not isinstance(base_model, str):
        raise InputError("missing model.name", file=cfg_path, field="model.name")

    found: dict[str, str] = {}
    for name, paths in _RUN_INFO_KEYS.items():
        for path in paths:
            v = _dig(info, path)
            if isinstance(v, dict) and v and all(isinstance(x, str) for x in v.values()):
                # {path: sha256} per data file: hash the sorted contents' hashes, so the same data
                # read from another folder has the same lineage.
                v = sha256_json(sorted(v.values()))
            if isinstance(v, str) and v:
                found[name] = v
                break
    if "base_sha256" not in found:
        from ..models import weights_fingerprint

        found["base_sha256"] = weights_fingerprint(base_model, revision=_dig(cfg, ("model", "revision")))
    if "tokenizer_sha256" not in found:
        # The adapter folder may carry its own tokenizer (extended vocabulary); else the base's.
        from ..models import load_tokenizer, tokenizer_fingerprint

        src = str(adapter) if (adapter / "tokenizer_config.json").exists() else base_model
        found["tokenizer_sha256"] = tokenizer_fingerprint(load_tokenizer(src))
    if "data_sha256" not in found:
        files: list[Path] = []
        for p in (_dig(cfg, ("data", "train")) or []) + [_dig(cfg, ("data", "replay"))]:
            if p is None:
                continue
            p = Path(p)
            if not p.exists():
                raise InputError(f"data file {p} named in the config no longer exists; cannot hash it", file=cfg_path, field="data.train")
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
        found["data_sha256"] = sha256_files(files) if files else sha256_json([])
    found.setdefault("code_version", f"forgetless {__version__}")

    # The config hash ignores run_dir: the same job run into two folders has the same config.
    config_sha = sha256_json({k: v for k, v in cfg.items() if k != "run_dir"})
    step = _selected_step(summary, rows, run_dir)
    by_step = {r["step"]: r for r in rows}
    if step not in by_step:
        raise InputError(f"selected step {step} has no line in {artifacts.METRICS}", file=run_dir / artifacts.SUMMARY)
    if 0 not in by_step:
        raise InputError("no step 0 (base model) evaluation", file=run_dir / artifacts.METRICS)
    scores, base_scores = _numeric(by_step[step]), _numeric(by_step[0])
    budget = _dig(cfg, ("budget", "general_kl"))
    budget = float(budget) if isinstance(budget, (int, float)) else None
    domain_ok, general_ok, reasons = judge_suites(scores, base_scores, budget)
    return RunRecord(
        run_dir=str(run_dir),
        base_model=base_model,
        adapter_sha256=adapter_hash(adapter),
        base_sha256=found["base_sha256"],
        tokenizer_sha256=found["tokenizer_sha256"],
        data_sha256=found["data_sha256"],
        config_sha256=config_sha,
        code_version=found["code_version"],
        selected_step=step,
        scores=scores,
        base_scores=base_scores,
        budget_general_kl=budget,
        domain_pass=domain_ok,
        general_pass=general_ok,
        reasons=reasons,
    )



def read_variant(rec: RunRecord, variant: str | None) -> dict[str, Any]:
    """What makes a version more than its run: kind, source run, artifact (+ hash) and gate verdict.

    ``variant`` None: the run itself, or a distilled student (its ``distill.json`` names the teacher
    run as the source; its gate is the two suites of its own run). ``int8``: the verdict in
    ``deploy/int8/quant_info.json``. ``gguf-<type>``: that file's entry in ``deploy/gguf/gguf_info.json``,
    with the GGUF file as the artifact. A verdict recorded for another adapter than the one on disk
    counts as refused. Returns ``{kind, source, artifact, artifact_sha256, gate_pass, reasons, scores}``.
    """
    from ..hashing import sha256_file

    run_dir = Path(rec.run_dir)
    out: dict[str, Any] = {"kind": "run", "source": None, "artifact": None, "artifact_sha256": None, "gate_pass": True, "reasons": [], "scores": {}}
    if variant is None:
        p = run_dir / artifacts.DISTILL_INFO
        if p.exists():
            info = _load_json(p)
            out.update(kind="distill", source=info.get("teacher_run"), artifact=str(p), artifact_sha256=sha256_file(p))
        return out
    if variant == "int8":
        p = run_dir / artifacts.DEPLOY_DIR / artifacts.QUANT_DIR / artifacts.QUANT_INFO
        if not p.exists():
            raise InputError("no int8 gate verdict: run `forgetless quantize` on the run first", file=p)
        info = _load_json(p)
        entry = {"verdict": info.get("verdict"), "reasons": info.get("reasons", [])}
        g = info.get("general", {})
        scores = {"general/kl": g.get("kl_int8"), "general/nll": g.get("nll_int8"), **(info.get("domain", {}).get("int8") or {})}
        artifact = p
    elif variant.startswith("gguf-"):
        ftype = variant.split("-", 1)[1]
        info_path = run_dir / artifacts.DEPLOY_DIR / artifacts.GGUF_DIR / artifacts.GGUF_INFO
        if not info_path.exists():
            raise InputError("no GGUF export: run `forgetless export RUN --format gguf` first", file=info_path)
        info = _load_json(info_path)
        entry = (info.get("files") or {}).get(ftype)
        if entry is None:
            raise InputError(f"no GGUF {ftype} file was exported", file=info_path)
        artifact = run_dir / artifacts.DEPLOY_DIR / artifacts.GGUF_DIR / artifacts.GGUF_FILE.format(ftype=ftype)
        if not artifact.exists():
            raise InputError("the exported GGUF file is gone", file=artifact)
        if sha256_file(artifact) != entry.get("sha256"):
            entry = {"verdict": "refused", "reasons": [f"{artifact.name} changed after its gate ran"]}
        scores = {"general/kl": (entry.get("general") or {}).get("kl"), "general/nll": (entry.get("general") or {}).get("nll"), **(entry.get("domain") or {})}
    else:
        raise InputError(f"unknown variant {variant!r} (choose from int8, gguf-f16, gguf-q8_0, gguf-q4_0)")
    reasons = [f"{variant} gate: {r}" for r in entry.get("reasons", [])]
    passed = entry.get("verdict") == "pass"
    if info.get("adapter_sha256") != rec.adapter_sha256:
        passed = False
        reasons.append(f"{variant} gate: its verdict was recorded for another adapter than the one in {run_dir / artifacts.ADAPTER_DIR}")
    if not passed and not reasons:
        reasons.append(f"{variant} gate: verdict recorded as {entry.get('verdict')!r}")
    out.update(
        kind=variant, source=str(run_dir), artifact=str(artifact), artifact_sha256=sha256_file(artifact), gate_pass=passed, reasons=reasons,
        scores={f"{variant}/{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float))},
    )  # fmt: skip
    return out
