"""``forgetless export RUN --format gguf``: the merged model as GGUF files, each gated against fp32.

Every file is written from the run's fp32 merged model (adapter at its selected scale, extended
vocabulary included), read back with transformers (``from_pretrained(..., gguf_file=...)``:
weights dequantized, tokenizer and chat template rebuilt from the file's metadata) and scored on
both suites next to fp32 by the same gate as int8 (:func:`forgetless.deploy.quantize.judge_variant`).
The domain suite prompts through the tokenizer read back from the file, so a broken vocabulary
or chat template fails the gate too.

``<run>/deploy/gguf/gguf_info.json`` records, per file, its SHA-256, size, both suites and the
verdict; :func:`check_gguf_gate` is what the registry calls before registering or promoting one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import artifacts
from ..errors import ForgetlessError
from ..hashing import adapter_hash, sha256_file
from ..io import atomic_write_json
from ..runfolder import read_run_folder
from .gguf_export import GGUF_TYPES, _source_pre, load_gguf, write_gguf
from .quantize import domain_part, judge_variant, score_against_fp32


def gguf_dir(run_dir: str | Path) -> Path:
    """``<run>/deploy/gguf``."""
    return Path(run_dir) / artifacts.DEPLOY_DIR / artifacts.GGUF_DIR


def gguf_path(run_dir: str | Path, ftype: str) -> Path:
    """``<run>/deploy/gguf/model-<ftype>.gguf``."""
    return gguf_dir(run_dir) / artifacts.GGUF_FILE.format(ftype=ftype)


def gguf_info_path(run_dir: str | Path) -> Path:
    """``<run>/deploy/gguf/gguf_info.json``."""
    return gguf_dir(run_dir) / artifacts.GGUF_INFO


def export_gguf(
    run_dir: str | Path,
    types: list[str],
    *,
    max_kl_increase: float = 0.01,
    max_domain_drop: float = 0.02,
    general_limit: int | None = None,
    domain_limit: int = 0,
    progress: Any = None,
    allow_remote_code: bool = False,
) -> dict[str, Any]:
    """Write one GGUF file per type in ``types``, gate each against fp32, write and return ``gguf_info.json``."""

    for ft in types:
        if ft not in GGUF_TYPES:
            raise ForgetlessError(f"--types: unknown GGUF type '{ft}' (choose from {', '.join(GGUF_TYPES)})")
    t0 = time.perf_counter()
    run = read_run_folder(run_dir)
    run_dir, cfg = run.path, run.config
    say = progress or (lambda _d: None)
    from ..models import resolve_model

    pre = _source_pre(resolve_model(cfg.model.name))
    written: dict[str, Path] = {}

    def build(merged: Any, tok: Any) -> Any:
        for ft in types:
            say(f"writing GGUF {ft}")
            written[ft] = write_gguf(merged, tok, gguf_path(run_dir, ft), ft, name=f"{run_dir.name} ({cfg.model.name} + forgetless adapter)", pre=pre)
            say(f"reading GGUF {ft} back")
            model, gtok = load_gguf(written[ft])
            yield ft, model, gtok

    sc = score_against_fp32(
        run_dir, build, general_limit=general_limit, domain_limit=domain_limit, progress=say, allow_remote_code=allow_remote_code
    )
    files = {}
    for ft, s in sc.candidates.items():
        passed, reasons, metric = judge_variant(
            sc.fp32, s, budget=sc.budget, max_kl_increase=max_kl_increase, max_domain_drop=max_domain_drop
        )
        p = written[ft]
        files[ft] = {
            "file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size,
            "general": {"kl": s["general/kl"], "kl_increase": s["general/kl"] - sc.fp32["general/kl"], "nll": s["general/nll"]},
            "domain": domain_part(s), "primary_metric": metric,
            "verdict": "pass" if passed else "refused", "reasons": reasons,
        }  # fmt: skip
    info = {
        "adapter_sha256": sc.adapter_sha256,
        "pre_tokenizer": pre,
        "fp32": {"general": {"kl": sc.fp32["general/kl"], "nll": sc.fp32["general/nll"]}, "domain": domain_part(sc.fp32)},
        "files": files,
        "budget_general_kl": sc.budget.general_kl,
        "limits": {"max_kl_increase": max_kl_increase, "max_domain_drop": max_domain_drop, "general_limit": sc.general_limit,
                   "domain_limit": domain_limit, "general_prompts": sc.general_prompts, "qa_items": sc.qa_items, "mc_items": sc.mc_items},
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    # Merge with files exported earlier under other types, so one info file describes the folder.
    old = _read_info(run_dir) or {}
    if old.get("adapter_sha256") == sc.adapter_sha256:
        info["files"] = {**old.get("files", {}), **files}
    atomic_write_json(gguf_info_path(run_dir), info)
    return info


def _read_info(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``gguf_info.json`` (None before the first export); a damaged one raises naming the file."""
    info = read_run_folder(run_dir).read_json(f"{artifacts.DEPLOY_DIR}/{artifacts.GGUF_DIR}/{artifacts.GGUF_INFO}")
    if info is not None and not isinstance(info, dict):
        raise ForgetlessError(f"{gguf_info_path(run_dir)}: expected a JSON object")
    return info


def check_gguf_gate(run_dir: str | Path, ftype: str) -> dict[str, Any]:
    """The recorded verdict of one exported GGUF file; raises :class:`ForgetlessError` unless it passed
    for the file and adapter that are on disk now."""
    run_dir = Path(run_dir)
    info = _read_info(run_dir)
    if info is None:
        raise ForgetlessError(f"{run_dir}: no GGUF export; run `forgetless export {run_dir} --format gguf` first")
    entry = info.get("files", {}).get(ftype)
    if entry is None:
        raise ForgetlessError(f"{run_dir}: no GGUF {ftype} file was exported (have: {', '.join(info.get('files', {})) or 'none'})")
    if entry.get("verdict") != "pass":
        raise ForgetlessError(f"{run_dir}: GGUF {ftype} was refused by the quality gate: {'; '.join(entry.get('reasons', []))}")
    p = gguf_path(run_dir, ftype)
    if not p.exists() or sha256_file(p) != entry.get("sha256"):
        raise ForgetlessError(f"{p}: missing or changed since its gate ran; export it again")
    if info.get("adapter_sha256") != adapter_hash(run_dir / artifacts.ADAPTER_DIR):
        raise ForgetlessError(f"{run_dir}: the adapter changed after the GGUF export; export again")
    return entry
