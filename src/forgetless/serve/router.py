"""Out-of-domain router: decide per request whether the adapter or the base model answers.

Calibrated at the end of training (:func:`calibrate_router`, in :mod:`.router_calibrate`) on the run's domain texts against
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import PreTrainedModel

from .. import artifacts
from ..adapter import adapter_off
from ..errors import ForgetlessError, InputError
from ..io import atomic_write_bytes, atomic_write_json, read_text_file
from ..lmhead import lm_split
from .prompts import EncodedPrompt

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


# Calibration lives in its own module; these names stay importable from here.
from .router_calibrate import _oof_mahalanobis, auroc, calibrate_router, fit_gaussian  # noqa: E402

__all__ = ["METHODS", "DEFAULT_SHRINKAGE", "Router", "auroc", "calibrate_router", "default_layer", "fit_gaussian",
           "hidden_state_at", "load_router", "pooled_hidden_states", "user_token_logprob"]  # fmt: skip
