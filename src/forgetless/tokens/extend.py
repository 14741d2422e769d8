"""Add domain terms to the vocabulary without changing general behaviour, and train only the new rows.

Three decisions keep general behaviour unchanged at step 0:

* **How terms enter the tokenizer.** Each term is added as two *non-special* added tokens: ``" term"``
  (the form a byte-level BPE sees after a space, like ``ĠZorvanex``) and ``"term"`` (start of a line,
  after a bracket or a chat-template newline). Added tokens are cut out of the text *before*
  pre-tokenization, and the rest of the text is tokenized exactly as before, so text without a term
  keeps exactly its old ids. The bare form is ``single_word`` so it never fires inside a longer word
  (``xZorvanex``); the spaced form cannot be (the tokenizers library checks the character *before*
  the leading space), so a word that *starts* with a term after a space (``" Zorvanexes"``) gets the
  term token plus the rest. ``normalized=False``: matched on the raw text, case-sensitive.
* **How new rows start.** ``init="pieces"``: each new input and output row is the mean of the rows of
  the pieces the term splits into today. The input side then carries roughly the old meaning; on the
  output side the new token's logit is ``h·mean(pieces)``, which by Jensen is at most the mean of the
  pieces' exponentiated logits, so its probability stays small wherever its pieces are unlikely.
  ``init="mean"`` (Hewitt 2021) uses the mean of *all* rows, which provably bounds the step-0
  ``KL(base || extended) <= log(1 + k/V)`` at every position, at the cost of a meaningless start.
  Measured on SmolLM2-135M with the 52 sample-domain terms (k=104, bound 2.1e-3): ``pieces`` gives a
  mean per-token KL of 7.3e-5 on the general sample but a worst position of 7.6e-3; ``mean`` gives
  1.5e-6 and 5.8e-5 (``bench/tokens_kl.py``).
* **Tied embeddings.** SmolLM2 ties ``lm_head`` to ``embed_tokens``: one row serves both, so writing
  it once initialises both sides. Untied models get both matrices written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import InputError
from ..io import read_text_file

# A "word" for term selection and fertility: a maximal run of letters. Digits are excluded because
# most BPE tokenizers split numbers digit by digit on purpose; they are not vocabulary gaps.
WORD_RE = re.compile(r"[^\W\d_]+")


def term_forms(term: str) -> list[str]:
    """The two surface forms a term is added as: after a space, and bare."""
    return [" " + term, term]


def piece_ids(tok: PreTrainedTokenizerBase, form: str) -> list[int]:
    """Token ids ``form`` splits into (no special tokens)."""
    return list(tok(form, add_special_tokens=False)["input_ids"])


def load_terms_file(path: str | Path) -> list[str]:
    """Read terms from a JSON list of strings or a text file with one term a line (``#`` comments allowed)."""
    path = Path(path)
    text = read_text_file(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON: {e.msg}", file=path, line=e.lineno) from None
        if not isinstance(data, list):
            raise InputError(f"expected a JSON list of terms, got {type(data).__name__}", file=path)
        terms = []
        for i, t in enumerate(data):
            if not isinstance(t, str):
                raise InputError(f"must be a string, got {type(t).__name__}", file=path, field=f"[{i}]")
            terms.append(t)
        return [validate_term(t, file=path, field=f"[{i}]") for i, t in enumerate(terms)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(validate_term(line, file=path, line=lineno))
    if not out:
        raise InputError("no terms in file", file=path)
    return out


def validate_term(term: str, *, file: str | Path | None = None, line: int | None = None, field: str | None = None) -> str:
    """A term must be one word: non-empty, no whitespace (the spaced form is built from it)."""
    if not term or term != term.strip() or any(c.isspace() for c in term):
        raise InputError(f"term {term!r} must be one word without spaces", file=file, line=line, field=field)
    return term


def select_terms(
    tok: PreTrainedTokenizerBase,
    texts: Iterable[str],
    k: int,
    *,
    min_count: int = 2,
    min_pieces: int = 3,
) -> list[str]:
    """The ``k`` domain words that would save the most tokens if each became one token.

    A word's saving is ``count x (pieces - 1)`` where ``pieces`` is how many tokens its spaced form
    (``" word"``, the common mid-sentence form) takes today; words seen fewer than ``min_count``
    times or split into fewer than ``min_pieces`` pieces are skipped (rare or already cheap). Ties
    break alphabetically so the choice is deterministic.
    """
    counts = Counter(w for t in texts for w in WORD_RE.findall(t))
    scored = []
    for word, n in counts.items():
        if n < min_count:
            continue
        pieces = len(piece_ids(tok, " " + word))
        if pieces >= min_pieces:
            scored.append((-(n * (pieces - 1)), word))
    return [w for _, w in sorted(scored)[:k]]


@dataclass
class ExtendResult:
    """What :func:`extend_vocabulary` did: the new token ids, where they came from, and the sizes."""

    terms: list[str]
    forms: list[str]  # one entry per new token, aligned with new_ids
    new_ids: list[int]
    pieces: list[list[int]]  # old piece ids each new row was initialised from
    old_vocab: int  # embedding rows before
    new_vocab: int  # embedding rows after
    tied: bool
    init: str
    skipped: list[str] = field(default_factory=list)  # forms already a single token (nothing to add)

    @property
    def k(self) -> int:
        """Number of new tokens (the k of the KL bound)."""
        return len(self.new_ids)

    def kl_bound(self) -> float:
        """Hewitt's step-0 bound on KL(base || extended): ``log(1 + k/V)``."""
        import math

        return math.log1p(self.k / self.old_vocab)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (for tokens.json in the run folder)."""
        d = asdict(self)
        d["k"] = self.k
        d["kl_bound"] = self.kl_bound()
        return d


def _is_tied(model: PreTrainedModel) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def add_terms_to_tokenizer(tok: PreTrainedTokenizerBase, terms: Sequence[str]) -> tuple[list[str], list[list[int]], list[str]]:
    """Add each term's forms as non-special tokens; return (added forms, their old pieces, skipped forms).

    A form that is already a single token is skipped (nothing to gain). Pieces are computed before
    any token is added, so they are the *old* tokenizer's split.
    """
    forms, pieces, skipped = [], [], []
    seen = set()
    for term in terms:
        validate_term(term)
        for form in term_forms(term):
            if form in seen:
                continue
            seen.add(form)
            ids = piece_ids(tok, form)
            if len(ids) <= 1:
                skipped.append(form)
                continue
            forms.append(form)
            pieces.append(ids)
    added = [
        # single_word only on the bare form: see the module docstring for why not on the spaced one.
        AddedToken(f, single_word=not f.startswith(" "), lstrip=False, rstrip=False, normalized=False, special=False)
        for f in forms
    ]
    n = tok.add_tokens(added)
    if n != len(forms):
        raise RuntimeError(f"tokenizer added {n} of {len(forms)} new tokens; some forms already existed as added tokens")
    return forms, pieces, skipped


@torch.no_grad()
def extend_vocabulary(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    terms: Sequence[str],
    *,
    init: Literal["pieces", "mean"] = "pieces",
) -> ExtendResult:
    """Add ``terms`` to ``tok`` and grow ``model``'s embeddings (in place); initialise every new row.

    ``init="pieces"`` sets each new input row and output row to the mean of the term's old pieces'
    rows; ``init="mean"`` to the mean of all old rows (Hewitt 2021). Tied embeddings are written
    once (one matrix); untied ones have both matrices written; an output bias, if any, gets the
    same treatment. Returns the new ids in the order of ``result.forms``.
    """
    tied = _is_tied(model)
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    forms, pieces, skipped = add_terms_to_tokenizer(tok, terms)
    new_ids = [tok.convert_tokens_to_ids(f) for f in forms]
    needed = max([len(tok)] + [i + 1 for i in new_ids])
    if needed > old_rows:
        # mean_resizing=False: we overwrite every new row ourselves just below.
        model.resize_token_embeddings(needed, mean_resizing=False)
    if new_ids and min(new_ids) < old_rows:
        # The model had spare (padding) rows beyond the tokenizer: the new ids reuse them. Their old
        # values were never trained, so overwriting them is safe, and KL counts them as new.
        old_rows = min(new_ids)
    in_w = model.get_input_embeddings().weight
    out_mod = model.get_output_embeddings()
    matrices = [in_w] if tied or out_mod is None else [in_w, out_mod.weight]
    for w in matrices:
        if init == "mean":
            # Hewitt: the mean of all existing rows; Jensen bounds each new token's logit mass.
            w[new_ids] = w[:old_rows].mean(0, keepdim=True).to(w.dtype).expand(len(new_ids), -1)
        else:
            for i, p in zip(new_ids, pieces):
                w[i] = w[p].float().mean(0).to(w.dtype)
    bias = getattr(out_mod, "bias", None) if out_mod is not None else None
    if bias is not None:
        for i, p in zip(new_ids, pieces):
            bias[i] = bias[:old_rows].mean() if init == "mean" else bias[p].mean()
    if tied and not _is_tied(model):
        raise RuntimeError("resizing untied the input and output embeddings")  # a transformers regression
    return ExtendResult(
        terms=list(terms),
        forms=forms,
        new_ids=new_ids,
        pieces=pieces,
        old_vocab=old_rows,
        new_vocab=model.get_input_embeddings().weight.shape[0],
        tied=tied,
        init=init,
        skipped=skipped,
    )


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def lora_token_kwargs(model: PreTrainedModel, result: ExtendResult) -> dict[str, Any]:
    """``LoraConfig`` keyword arguments that make only the new rows trainable (PEFT ``trainable_token_indices``).

    Tied model: only the input embedding is named; PEFT wraps the tied ``lm_head`` with an adapter
    that shares the same delta, so one set of rows trains both sides. Untied model: both the input
    embedding and ``lm_head`` are named, so the new *output* rows train too (PEFT targets only the
    input embedding when given a plain list).
    """
    emb_name = _module_name(model, model.get_input_embeddings()).split(".")[-1]
    indices: dict[str, list[int]] = {emb_name: list(result.new_ids)}
    out = model.get_output_embeddings()
    if out is not None and not result.tied:
        indices[_module_name(model, out).split(".")[-1]] = list(result.new_ids)
    return {"trainable_token_indices": indices}


def token_parameters(peft_model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable new-row parameters (PEFT's ``trainable_tokens_delta``), each listed once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for name, p in peft_model.named_parameters():
        if "trainable_tokens_delta" in name and p.requires_grad:
            seen.setdefault(id(p), p)
    return list(seen.values())


def token_param_groups(peft_model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    """One optimizer param group with only the new embedding rows, at their own ``lr``, no weight decay.

    No weight decay: AdamW would pull the rows towards zero, not towards their initial value, i.e.
    away from the meaning the init gave them.
    """
    params = token_parameters(peft_model)
    if not params:
        raise ValueError("the model has no trainable token rows; build LoraConfig with lora_token_kwargs(...)")
    return [{"params": params, "lr": lr, "weight_decay": 0.0, "name": "new_token_rows"}]


def param_groups(peft_model: torch.nn.Module, *, lr: float, token_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Every trainable parameter in two groups: the adapter (``lr``, ``weight_decay``) and the new rows (``token_lr``)."""
    tokens = {id(p) for p in token_parameters(peft_model)}
    rest = [p for p in peft_model.parameters() if p.requires_grad and id(p) not in tokens]
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "adapter"}]
    return groups + (token_param_groups(peft_model, token_lr) if tokens else [])


def apply_tokens_config(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, cfg: Any, train_texts: Sequence[str]
) -> ExtendResult | None:
    """What a run does for its ``tokens:`` section, before ``get_peft_model``: nothing when disabled,
    else pick terms (``cfg.terms_file`` or the top ``cfg.top_k`` of ``train_texts``) and extend in place.

    Deterministic for the same config and data, so a resumed run rebuilds the same ids and init
    before loading its checkpoint.
    """
    if not cfg.enabled:
        return None
    if cfg.terms_file is not None:
        terms = load_terms_file(cfg.terms_file)
    else:
        terms = select_terms(tok, train_texts, cfg.top_k, min_count=cfg.min_count, min_pieces=cfg.min_pieces)
        if not terms:
            raise InputError(
                f"tokens.enabled is true but no training word occurs >= {cfg.min_count} times and splits into "
                f">= {cfg.min_pieces} pieces; lower tokens.min_count/min_pieces or set tokens.terms_file"
            )
    return extend_vocabulary(model, tok, terms, init=cfg.init)
