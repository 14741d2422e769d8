"""What a run folder says about itself, as the registry stores it: lineage hashes, both suites'
scores and the verdict.

The registry never trusts a name: every field here is a content hash or a number read from the
run folder's own files, through the one run-folder reader (:mod:`forgetless.runfolder`). Where
``run_info.json`` lacks a hash (an older run, or a run folder assembled by hand) the hash is
computed from the files the resolved config names. The general verdict is the budget's own
(:func:`forgetless.budget.judge`), on the metrics of the adapter the run exported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, artifacts
from ..budget import PRIMARY_DOMAIN, BudgetConfig, Verdict, judge, lower_is_better
from ..errors import InputError
from ..hashing import adapter_hash, sha256_files, sha256_json
from ..runfolder import RunFolder, read_run_folder

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
    scores: dict[str, float] = field(default_factory=dict)  # the exported adapter: "domain/..." and "general/..."
    base_scores: dict[str, float] = field(default_factory=dict)  # step 0 (the base model)
    budget_general_kl: float | None = None
    domain_pass: bool = False
    general_pass: bool = False
    reasons: list[str] = field(default_factory=list)  # why a suite failed, one line each
    budget_state: str = "unset"  # the budget's verdict: inside, outside, or unset (no budget was set)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _numeric(rec: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in rec.items()
        if k.startswith(("domain/", "general/")) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


@dataclass(frozen=True)
class SuiteVerdict:
    """Both suites judged: the domain against the base, the general side by the budget."""

    domain_pass: bool
    budget: Verdict
    reasons: list[str]

    @property
    def general_pass(self) -> bool:
        """Only a budget that was set and kept passes; "no budget set" is not a pass."""
        return self.budget.inside


def judge_suites(scores: dict[str, Any], base_scores: dict[str, Any], budget: BudgetConfig) -> SuiteVerdict:
    """Both suites of the exported adapter's ``scores`` against step 0 (the base).

    * general: the budget's verdict (:func:`forgetless.budget.judge`), the same one training,
      selection and the deploy gates use;
    * domain passes when the primary domain metric -- the one the training stage ranks checkpoints
      by (:data:`~forgetless.budget.PRIMARY_DOMAIN`, else perplexity) -- is strictly better than the base's.
    """
    verdict = judge(budget, scores)
    reasons = [f"general: {v}" for v in verdict.violations]
    if verdict.state == "unset":
        reasons.append(f"general: {verdict.describe()}: nothing bounds the drift")
    primary = next((m for m in (*PRIMARY_DOMAIN, "domain/ppl") if m in scores and m in base_scores), None)
    if primary is None:
        reasons.append("domain: no primary domain metric measured at both step 0 and the selected step")
        return SuiteVerdict(False, verdict, reasons)
    delta = float(scores[primary]) - float(base_scores[primary])
    domain_ok = (-delta if lower_is_better(primary) else delta) > 0
    if not domain_ok:
        reasons.append(f"domain: {primary} did not improve on the base ({base_scores[primary]:.4g} -> {scores[primary]:.4g})")
    return SuiteVerdict(domain_ok, verdict, reasons)


def _lineage_hashes(run: RunFolder) -> dict[str, str]:
    info = run.info()
    cfg = run.config
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

        found["base_sha256"] = weights_fingerprint(cfg.model.name, revision=cfg.model.revision)
    if "tokenizer_sha256" not in found:
        # The adapter folder may carry its own tokenizer (extended vocabulary); else the base's.
        from ..models import load_tokenizer, tokenizer_fingerprint

        own = (run.adapter_dir / "tokenizer_config.json").exists()
        src = str(run.adapter_dir) if own else cfg.model.name
        found["tokenizer_sha256"] = tokenizer_fingerprint(load_tokenizer(src, revision=None if own else cfg.model.revision))
    if "data_sha256" not in found:
        files: list[Path] = []
        for p in [*cfg.data.train, cfg.data.replay]:
            if p is None:
                continue
            if not p.exists():
                raise InputError(f"data file {p} named in the config no longer exists; cannot hash it", file=run.path, field="data.train")
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
        found["data_sha256"] = sha256_files(files) if files else sha256_json([])
    found.setdefault("code_version", f"forgetless {__version__}")
    return found


def read_run(run_dir: str | Path) -> RunRecord:
    """Read a finished run folder into a :class:`RunRecord`; raises :class:`InputError` naming the bad file."""
    run = read_run_folder(run_dir)
    adapter = run.require_adapter()
    step, _scale, selected = run.selected()
    rows = run.metrics()
    if not rows or rows[0]["step"] != 0:
        raise InputError("no step 0 (base model) evaluation", file=run.path / "metrics.jsonl")
    found = _lineage_hashes(run)
    scores, base_scores = _numeric(selected), _numeric(rows[0])
    verdict = judge_suites(scores, base_scores, run.config.budget)
    return RunRecord(
        run_dir=str(run.path),
        base_model=run.config.model.name,
        adapter_sha256=adapter_hash(adapter),
        base_sha256=found["base_sha256"],
        tokenizer_sha256=found["tokenizer_sha256"],
        data_sha256=found["data_sha256"],
        config_sha256=run.config_sha256(),
        code_version=found["code_version"],
        selected_step=step,
        scores=scores,
        base_scores=base_scores,
        budget_general_kl=run.config.budget.general_kl,
        domain_pass=verdict.domain_pass,
        general_pass=verdict.general_pass,
        reasons=verdict.reasons,
        budget_state=verdict.budget.state,
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

    run = read_run_folder(rec.run_dir)
    run_dir = run.path
    out: dict[str, Any] = {"kind": "run", "source": None, "artifact": None, "artifact_sha256": None, "gate_pass": True, "reasons": [], "scores": {}}
    if variant is None:
        info = _json_object(run, artifacts.DISTILL_INFO)
        if info is not None:
            p = run_dir / artifacts.DISTILL_INFO
            out.update(kind="distill", source=info.get("teacher_run"), artifact=str(p), artifact_sha256=sha256_file(p))
        return out
    if variant == "int8":
        rel = f"{artifacts.DEPLOY_DIR}/{artifacts.QUANT_DIR}/{artifacts.QUANT_INFO}"
        p = run_dir / rel
        info = _json_object(run, rel)
        if info is None:
            raise InputError("no int8 gate verdict: run `forgetless quantize` on the run first", file=p)
        entry = {"verdict": info.get("verdict"), "reasons": info.get("reasons", [])}
        g = info.get("general", {})
        scores = {"general/kl": g.get("kl_int8"), "general/nll": g.get("nll_int8"), **(info.get("domain", {}).get("int8") or {})}
        artifact = p
    elif variant.startswith("gguf-"):
        ftype = variant.split("-", 1)[1]
        rel = f"{artifacts.DEPLOY_DIR}/{artifacts.GGUF_DIR}/{artifacts.GGUF_INFO}"
        info_path = run_dir / rel
        info = _json_object(run, rel)
        if info is None:
            raise InputError("no GGUF export: run `forgetless export RUN --format gguf` first", file=info_path)
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


def _json_object(run: RunFolder, name: str) -> dict[str, Any] | None:
    """A JSON object file of the run folder (None when absent); anything else raises naming the file."""
    obj = run.read_json(name)
    if obj is not None and not isinstance(obj, dict):
        raise InputError("expected a JSON object", file=run.path / name)
    return obj
