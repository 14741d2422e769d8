"""Out-of-domain router: decide per request whether the adapter or the base model answers.

Calibrated at the end of training (:func:`calibrate_router`) on the run's domain texts against
general prompts, on the BASE model (adapter disabled), and stored in the run folder:

* ``mahalanobis`` (default): a Gaussian fitted to the base model's hidden states, mean-pooled over
  the user's own tokens, of the domain texts. Score = Mahalanobis distance to that Gaussian. The
  covariance is shrunk towards a scaled identity: with ~100 domain texts against a 576-wide hidden
  state the sample covariance is singular (see :data:`DEFAULT_SHRINKAGE` for how much and why).
* ``mahalanobis_tokens``: the Mahalanobis score and a token-level novelty score (how many of the
  user's tokens have no near twin among the domain texts' tokens, :mod:`.router_tokens`); a
  request goes to the base when either is past its own threshold. The combined score is the larger
  of the two margins (each in its own standard deviations), so its threshold is 0. Neighbouring
  specialties, which look like the domain to a pooled Gaussian, are what the token part catches.
* ``likelihood_ratio``: how much more likely the adapter finds the user's tokens than the base
  does (per token). The adapter was trained on the domain, so domain text gains likelihood and
  general text does not. Needs the adapter (two forward passes per request instead of one).

For both, a higher score means "more out of domain"; a request whose score is above the threshold
goes to the base. The threshold is the ``1 - target_domain_to_base`` quantile of the domain
texts' scores, so about ``target_domain_to_base`` of domain queries are sent to the base. For
Mahalanobis those domain scores are out-of-fold (5-fold): a text's distance to a Gaussian fitted
on itself is optimistic, and a threshold set on it would send far more real domain queries away.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf, ShrunkCovariance
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import artifacts
from ..adapter import adapter_off, is_peft
from ..errors import ForgetlessError, InputError
from ..io import atomic_write_bytes, atomic_write_json, read_text_file
from ..lmhead import lm_split
from .prompts import EncodedPrompt, encode_user_texts

METHODS = ("mahalanobis", "mahalanobis_tokens", "likelihood_ratio")
ROUTER_FORMAT = 1
DEFAULT_LAYER = -1  # last hidden state: the default of the low-level pooling functions
# Which hidden state to pool by default, as a fraction of the depth. Measured on the embedded model
# (30 layers; docs/serving.md): held-out AUROC 1.000 at layers 6-8, 0.988 at the last layer. Early-
# middle layers still describe the input's topic; the last ones already describe the next token.
DEFAULT_LAYER_FRACTION = 0.25
# Covariance shrinkage towards a scaled identity. Ledoit-Wolf picks ~0.13 here, which is the best
# estimate of the covariance but a poor router: training questions repeat a few templates, so the
# fitted Gaussian is tight along "template" directions and every differently-phrased domain
# question lands past the threshold (measured on the sample domain, layer 8: held-out domain
# questions sent to base 100% with Ledoit-Wolf, 0% at 0.995, general prompts 100% and 99%).
# Near-identity shrinkage keeps the ranking (AUROC 0.995 -> 1.000) and makes the threshold
# transfer. Chosen on the sample domain's held-out sets: see docs/serving.md.
DEFAULT_SHRINKAGE = 0.995


def default_layer(model: PreTrainedModel) -> int:
    """Index into ``hidden_states`` (0 = embeddings) a quarter of the way up the model."""
    n = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if n == 0:
        return DEFAULT_LAYER
    return max(1, round(n * DEFAULT_LAYER_FRACTION))


def _batches(prompts: Sequence[EncodedPrompt], batch_size: int):
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


def _pad(prompts: Sequence[EncodedPrompt], idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Right padding: positions (and so hidden states) of real tokens are the same as unpadded.
    width = max(len(prompts[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(prompts[i])
        ids[row, :n] = torch.tensor(prompts[i].ids)
        mask[row, :n] = 1
    return ids, mask


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass early, carrying that layer's output."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _decoder_layers(model: Any) -> torch.nn.ModuleList | None:
    n = getattr(model.config, "num_hidden_layers", None)
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    return None


def hidden_state_at(model: Any, ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` of a forward pass, stopping after that layer.

    The router reads a layer a quarter of the way up, so running the rest of the model would
    waste three quarters of the compute: a forward hook on that layer ends the pass early.
    """
    layers = _decoder_layers(model)
    n = len(layers) if layers is not None else 0
    at = layer % (n + 1) if n else layer
    if layers is None or at in (0, n):
        # Embeddings or the last (normed) state: the model's own output_hidden_states is exact.
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]

    def stop(_mod: Any, _args: Any, out: Any) -> None:
        raise _Stop(out[0] if isinstance(out, tuple) else out)

    handle = layers[at - 1].register_forward_hook(stop)
    try:
        model(input_ids=ids, attention_mask=mask)
    except _Stop as s:
        return s.hidden
    finally:
        handle.remove()
    raise RuntimeError("the forward pass never reached the router layer")


@torch.no_grad()
def pooled_hidden_states(
    model: PreTrainedModel,
    prompts: Sequence[EncodedPrompt],
    *,
    layer: int = DEFAULT_LAYER,
    batch_size: int = 16,
    pad_id: int = 0,
) -> np.ndarray:
    """Mean over each prompt's user positions of hidden state ``layer``, shape ``[n, hidden]`` (float64).

    Runs on whatever ``model`` is: wrap it in :func:`~forgetless.adapter.adapter_off` for the base model.
    """
    dev = next(model.parameters()).device
    out: np.ndarray | None = None
    for idx in _batches(prompts, batch_size):
        ids, mask = _pad(prompts, idx, pad_id)
        hs = hidden_state_at(model, ids.to(dev), mask.to(dev), layer).float()
        for row, i in enumerate(idx):
            vec = hs[row, prompts[i].user_positions].mean(0).double().cpu().numpy()
            if out is None:
                out = np.zeros((len(prompts), vec.shape[0]))
            out[i] = vec
    return out if out is not None else np.zeros((0, 0))


@torch.no_grad()
def user_token_logprob(
    model: PreTrainedModel,
    prompts: Sequence[EncodedPrompt],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
) -> np.ndarray:
    """Mean log-probability per user token (each predicted from the tokens before it), shape ``[n]``."""
    dev = next(model.parameters()).device
    out = np.zeros(len(prompts))
    split = lm_split(model)
    for idx in _batches(prompts, batch_size):
        ids, mask = _pad(prompts, idx, pad_id)
        if split is None:
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
            project = lambda row, prev: logits[row, prev]  # noqa: E731
        else:
            # The head runs only at the positions scored, one prompt at a time: a batch never holds
            # rows x length x vocabulary logits (3.4 GB for 16 x 200 tokens at a 262k vocabulary).
            decoder, head = split
            hidden = decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
            project = lambda row, prev: head(hidden[row, prev])  # noqa: E731
        for row, i in enumerate(idx):
            # Token at position t is predicted by the logits at t-1: position 0 has no prediction.
            pos = [p for p in prompts[i].user_positions if p > 0]
            if not pos:
                continue
            tgt = torch.tensor([prompts[i].ids[p] for p in pos], device=dev)
            prev = torch.tensor([p - 1 for p in pos], device=dev)
            logp = torch.log_softmax(project(row, prev).float(), dim=-1)
            out[i] = float(logp.gather(1, tgt[:, None]).mean())
    return out


@dataclass
class Router:
    """A calibrated router: its statistics, threshold and how to score prompts."""

    method: str
    threshold: float
    layer: int = DEFAULT_LAYER
    mean: np.ndarray | None = None
    precision: np.ndarray | None = None
    covariance: np.ndarray | None = None
    score_scale: float = 1.0  # std of domain scores: margins in the metrics are in these units
    info: dict[str, Any] = field(default_factory=dict)
    tokens: Any = None  # a router_tokens.TokenBank (method mahalanobis_tokens)

    def mahalanobis(self, feats: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``feats`` to the domain Gaussian."""
        assert self.mean is not None and self.precision is not None
        d = feats - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def score(self, model: PreTrainedModel, prompts: Sequence[EncodedPrompt], *, pad_id: int = 0, batch_size: int = 32) -> np.ndarray:
        """Out-of-domain score of each prompt (higher = further from the domain).

        The base runs with the adapter disabled (:func:`~forgetless.adapter.adapter_off`), which flips a flag and
        copies nothing; the caller must own the model meanwhile (the server's engine thread does).
        """
        if self.method == "mahalanobis":
            with adapter_off(model):
                feats = pooled_hidden_states(model, prompts, layer=self.layer, pad_id=pad_id, batch_size=batch_size)
            return self.mahalanobis(feats)
        if self.method == "mahalanobis_tokens":
            from .router_tokens import token_states

            with adapter_off(model):
                states = token_states(model, prompts, layer=self.layer, pad_id=pad_id, batch_size=batch_size)
            return self.combined(states)
        with adapter_off(model):
            lp_base = user_token_logprob(model, prompts, pad_id=pad_id, batch_size=batch_size)
        lp_ad = user_token_logprob(model, prompts, pad_id=pad_id, batch_size=batch_size)
        return -(lp_ad - lp_base)

    def combined(self, states: Sequence[np.ndarray], *, leave_out_own: bool = False) -> np.ndarray:
        """``mahalanobis_tokens`` score from token states: the larger margin of the two parts (> 0: base)."""
        i = self.info
        pooled = np.stack([s.mean(0) if len(s) else np.zeros(self.mean.shape[0]) for s in states]).astype(np.float64)  # type: ignore[union-attr]
        m = (self.mahalanobis(pooled) - i["mahalanobis_threshold"]) / i["mahalanobis_scale"]
        t = (self.tokens.novelty(states, quantile=i["token_quantile"], leave_out_own=leave_out_own) - i["token_threshold"]) / i["token_scale"]
        return np.maximum(m, t)

    def margin(self, score: float) -> float:
        """How far past the threshold a score is, in standard deviations of the domain scores."""
        return (score - self.threshold) / self.score_scale if self.score_scale > 0 else score - self.threshold

    def save(self, out_dir: Path) -> None:
        """Write ``router.safetensors`` (statistics) and ``router.json`` (threshold, AUROC, settings)."""
        tensors = {"threshold": np.array([self.threshold], dtype=np.float64)}
        if self.mean is not None:
            tensors.update(mean=self.mean, precision=self.precision, covariance=self.covariance)
        if self.tokens is not None:
            # fp16 halves the file; cosine similarities move by < 1e-3, far below the threshold's margins.
            tensors.update(token_mean=self.tokens.mean, token_std=self.tokens.std, token_bank=self.tokens.bank.astype(np.float16))
        atomic_write_bytes(out_dir / artifacts.ROUTER, _safetensors_bytes(tensors))
        info = dict(self.info, format=ROUTER_FORMAT, method=self.method, layer=self.layer,
                    threshold=self.threshold, score_scale=self.score_scale)  # fmt: skip
        atomic_write_json(out_dir / artifacts.ROUTER_INFO, info)


def _safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(p))
        return p.read_bytes()


def load_router(run_dir: Path) -> Router | None:
    """The router stored in ``run_dir``, or None when the run has none (then nothing is routed)."""
    info_path = run_dir / artifacts.ROUTER_INFO
    if not info_path.exists():
        return None
    try:
        info = json.loads(read_text_file(info_path))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", file=info_path, line=e.lineno) from None
    for key in ("method", "threshold", "layer"):
        if key not in info:
            raise InputError("is missing", file=info_path, field=key)
    if info["method"] not in METHODS:
        raise InputError(f"must be one of {', '.join(METHODS)}", file=info_path, field="method")
    r = Router(method=info["method"], threshold=float(info["threshold"]), layer=int(info["layer"]),
               score_scale=float(info.get("score_scale", 1.0)), info=info)  # fmt: skip
    if r.method in ("mahalanobis", "mahalanobis_tokens"):
        st = run_dir / artifacts.ROUTER
        if not st.exists():
            raise ForgetlessError(f"{info_path} says method 'mahalanobis' but {st} is missing")
        t = load_file(str(st))
        r.mean, r.precision, r.covariance = t["mean"], t["precision"], t["covariance"]
        if r.method == "mahalanobis_tokens":
            from .router_tokens import TokenBank

            for key in ("mahalanobis_threshold", "mahalanobis_scale", "token_threshold", "token_scale", "token_quantile"):
                if key not in info:
                    raise InputError("is missing", file=info_path, field=key)
            if "token_bank" not in t:
                raise ForgetlessError(f"{st} has no token_bank (method mahalanobis_tokens)")
            r.tokens = TokenBank(t["token_mean"], t["token_std"], t["token_bank"].astype(np.float32))
    return r


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
