"""Router calibration: fit the out-of-domain router of :mod:`.router` on a run's domain and general texts.

Run once at the end of training (or by hand), never while serving: the fitted statistics and the
threshold land in the run folder (``router.safetensors`` + ``router.json``), which
:func:`~.router.load_router` reads back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf, ShrunkCovariance
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapter import adapter_off, is_peft
from ..errors import ForgetlessError
from .prompts import encode_user_texts
from .router import DEFAULT_SHRINKAGE, METHODS, Router, default_layer, pooled_hidden_states


def auroc(in_domain: Sequence[float], out_of_domain: Sequence[float]) -> float:
    """AUROC of telling out-of-domain from in-domain by score (1.0 = every OOD score is higher)."""
    y = np.r_[np.zeros(len(in_domain)), np.ones(len(out_of_domain))]
    return float(roc_auc_score(y, np.r_[in_domain, out_of_domain]))


def fit_gaussian(feats: np.ndarray, shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, shrunk covariance ``(1-s)*S + s*mu*I``, its inverse and the shrinkage ``s`` used.

    ``shrinkage=None`` estimates ``s`` with Ledoit-Wolf (optimal for the covariance itself); a
    number fixes it (what the router uses by default, see :data:`DEFAULT_SHRINKAGE`).
    """
    est = LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)
    est.fit(feats)
    used = float(est.shrinkage_) if shrinkage is None else float(shrinkage)
    return est.location_, est.covariance_, est.precision_, used


def _oof_mahalanobis(feats: np.ndarray, folds: int, seed: int, shrinkage: float | None = None) -> np.ndarray:
    """Each domain text's distance to a Gaussian fitted without it (k-fold)."""
    scores = np.zeros(len(feats))
    k = max(2, min(folds, len(feats) // 2))
    for fit_idx, held_idx in KFold(n_splits=k, shuffle=True, random_state=seed).split(feats):
        mean, _, prec, _ = fit_gaussian(feats[fit_idx], shrinkage)
        d = feats[held_idx] - mean
        scores[held_idx] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0.0))
    return scores


def calibrate_router(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    domain_texts: list[str],
    general_texts: list[str],
    out_dir: Path,
    *,
    target_domain_to_base: float = 0.05,
    method: str = "mahalanobis_tokens",
    layer: int | None = None,
    shrinkage: float | None = DEFAULT_SHRINKAGE,
    token_quantile: float | None = None,
    general_quantile: float | None = None,
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Calibrate the router on the base model and write ``router.safetensors`` + ``router.json`` into ``out_dir``.

    ``domain_texts`` are the run's domain queries/documents, ``general_texts`` general prompts; each
    is scored as a one-turn user message. ``layer`` indexes ``hidden_states`` (0 = embeddings;
    default: a quarter of the depth, see :func:`default_layer`); ``shrinkage`` is the covariance
    shrinkage for Mahalanobis (None: Ledoit-Wolf's estimate; see :data:`DEFAULT_SHRINKAGE`). Returns what ``router.json`` holds: method, threshold,
    calibration AUROC (domain vs general), the share of domain and of general texts that would be
    sent to the base, sizes and timings.
    """
    if method not in METHODS:
        raise ForgetlessError(f"router method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0.0 <= target_domain_to_base < 1.0:
        raise ForgetlessError(f"target_domain_to_base must be in [0, 1), got {target_domain_to_base}")
    domain_texts = [t for t in domain_texts if t.strip()]
    general_texts = [t for t in general_texts if t.strip()]
    if len(domain_texts) < 4 or len(general_texts) < 2:
        raise ForgetlessError(
            f"router calibration needs at least 4 domain and 2 general texts, got {len(domain_texts)} and {len(general_texts)}"
        )
    if method == "likelihood_ratio" and not is_peft(model):
        raise ForgetlessError("the likelihood_ratio router compares adapter and base: pass the PeftModel")
    t0 = time.perf_counter()
    if layer is None:
        layer = default_layer(model.get_base_model() if is_peft(model) else model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    dom = encode_user_texts(tok, domain_texts)
    gen = encode_user_texts(tok, general_texts)
    was_training = model.training
    model.eval()
    try:
        router = Router(method=method, threshold=0.0, layer=layer)
        if method == "mahalanobis_tokens":
            from . import router_tokens as rt

            tq = rt.DEFAULT_TOKEN_QUANTILE if token_quantile is None else token_quantile
            gq = rt.DEFAULT_GENERAL_QUANTILE if general_quantile is None else general_quantile
            with adapter_off(model):
                s_dom = rt.token_states(model, dom, layer=layer, batch_size=batch_size, pad_id=pad)
                s_gen = rt.token_states(model, gen, layer=layer, batch_size=batch_size, pad_id=pad)
            f_dom = np.stack([s.mean(0) for s in s_dom]).astype(np.float64)
            f_gen = np.stack([s.mean(0) for s in s_gen]).astype(np.float64)
            router.mean, router.covariance, router.precision, used = fit_gaussian(f_dom, shrinkage)
            m_dom = _oof_mahalanobis(f_dom, folds, seed, shrinkage)
            m_thr = float(np.quantile(m_dom, 1.0 - target_domain_to_base))
            router.tokens = rt.TokenBank.fit(s_dom)
            t_dom = router.tokens.novelty(s_dom, quantile=tq, leave_out_own=True)
            t_gen = router.tokens.novelty(s_gen, quantile=tq)
            router.info = {"mahalanobis_threshold": m_thr, "mahalanobis_scale": float(np.std(m_dom)) or 1.0,
                           "token_threshold": float(np.quantile(t_gen, gq)), "token_scale": float(np.std(t_gen)) or 1.0,
                           "token_quantile": tq}  # fmt: skip
            m_gen = router.mahalanobis(f_gen)
            i = router.info
            dom_scores = np.maximum((m_dom - m_thr) / i["mahalanobis_scale"], (t_dom - i["token_threshold"]) / i["token_scale"])
            gen_scores = np.maximum((m_gen - m_thr) / i["mahalanobis_scale"], (t_gen - i["token_threshold"]) / i["token_scale"])
            extra: dict[str, Any] = {**router.info, "general_quantile": gq, "shrinkage": used, "hidden_size": int(f_dom.shape[1]),
                                     "folds": folds, "domain_tokens": int(router.tokens.bank.shape[0])}  # fmt: skip
        elif method == "mahalanobis":
            with adapter_off(model):
                f_dom = pooled_hidden_states(model, dom, layer=layer, batch_size=batch_size, pad_id=pad)
                f_gen = pooled_hidden_states(model, gen, layer=layer, batch_size=batch_size, pad_id=pad)
            router.mean, router.covariance, router.precision, used = fit_gaussian(f_dom, shrinkage)
            dom_scores = _oof_mahalanobis(f_dom, folds, seed, shrinkage)
            gen_scores = router.mahalanobis(f_gen)
            extra = {"shrinkage": used, "shrinkage_method": "ledoit-wolf" if shrinkage is None else "fixed",
                                     "hidden_size": int(f_dom.shape[1]), "folds": folds}  # fmt: skip
        else:
            dom_scores = router.score(model, dom, pad_id=pad, batch_size=batch_size)
            gen_scores = router.score(model, gen, pad_id=pad, batch_size=batch_size)
            extra = {}
    finally:
        model.train(was_training)
    if method == "mahalanobis_tokens":
        router.threshold, router.score_scale = 0.0, 1.0  # each part's margin is already in its own std units
    else:
        router.threshold = float(np.quantile(dom_scores, 1.0 - target_domain_to_base))
        router.score_scale = float(np.std(dom_scores)) or 1.0
    router.info = {
        "calibration_auroc": auroc(dom_scores, gen_scores),
        "target_domain_to_base": target_domain_to_base,
        "domain_to_base": float(np.mean(dom_scores > router.threshold)),
        "general_to_base": float(np.mean(gen_scores > router.threshold)),
        "n_domain": len(domain_texts),
        "n_general": len(general_texts),
        "pooling": "mean over user-message tokens (chat template excluded)",
        "domain_score_quantiles": {q: float(np.quantile(dom_scores, float(q))) for q in ("0.05", "0.5", "0.95")},
        "general_score_quantiles": {q: float(np.quantile(gen_scores, float(q))) for q in ("0.05", "0.5", "0.95")},
        **extra,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    router.save(Path(out_dir))
    return dict(router.info, method=method, layer=layer, threshold=router.threshold, score_scale=router.score_scale)
