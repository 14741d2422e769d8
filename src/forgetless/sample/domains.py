"""Two more generated domains, of other shapes than the pharmacology sample, for benchmarks.

- ``quillmark``: the API reference of an invented Python library (functions with a module, a
  return type, a raised exception, a default and the version that added them), written as
  reference entries, changelog notes and forum answers.
- ``verrand``: an invented coastal fisheries regulation with numbered articles (each with a
  subject, a duty-bearer, a deadline, a penalty and an enforcing authority), written as the legal
  text, an official guidance note and a press summary.

Both follow the sample domain's recipe (:mod:`forgetless.sample.generate`): every name and fact
is invented, values are spread evenly over entities so multiple-choice distractors are real
answers elsewhere, a third of the entities appear only in documents (``split: doc_only``), and
held-out questions are phrased with templates never used in training. The same file names, so
``bench/forgetting.py --data examples/data/<name>`` runs on them. No planted noise: these
domains measure learning, not curation.

Regenerate with::

    python -m forgetless.sample.domains --out examples/data --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .generate import DOCS_FILE, HELDOUT_MC_FILE, HELDOUT_QA_FILE, README_FILE, TERMS_FILE, TRAIN_QA_FILE, _an, _balanced

Facts = dict[str, str]
COMMAND = "python -m forgetless.sample.domains --out examples/data --seed {seed}"


@dataclass(frozen=True)
class DomainSpec:
    """An invented world of entities with attributes, and how it is written and asked about.

    ``docs``: document styles, each ``(facts, variant) -> text`` stating every attribute, so any
    one document teaches the entity. ``train_q``: attribute -> (question, answer) templates for
    the ``qa_seen`` entities; ``heldout_qa``/``heldout_mc``: attribute -> question templates,
    disjoint from training's.
    """

    name: str
    title: str
    entity: str  # the key of the entity's name in its facts ("function", "article")
    entities: tuple[str, ...]
    values: dict[str, tuple[str, ...]]
    docs: tuple[Callable[[Facts, int], str], ...]
    train_q: dict[str, tuple[str, str]]
    heldout_qa: dict[str, str]
    heldout_mc: dict[str, str]
    n_seen: int
    terms: tuple[str, ...]


def build_world(spec: DomainSpec, seed: int = 0) -> dict[str, Any]:
    """Facts per entity (in ``spec.entities`` order) and the qa_seen / doc_only split."""
    rng = random.Random(f"{spec.name}:{seed}")
    n = len(spec.entities)
    cols = {a: _balanced(rng, list(v), n) for a, v in spec.values.items()}
    facts = [{spec.entity: e, **{a: cols[a][i] for a in spec.values}} for i, e in enumerate(spec.entities)]
    seen = set(rng.sample(spec.entities, spec.n_seen))
    return {"facts": facts, "qa_seen": [e for e in spec.entities if e in seen], "doc_only": [e for e in spec.entities if e not in seen]}


def generate(spec: DomainSpec, seed: int = 0) -> dict[str, list[Any]]:
    """Every data file's records for ``spec`` and ``seed`` (same names as the sample domain)."""
    world = build_world(spec, seed)
    facts, seen = world["facts"], set(world["qa_seen"])
    rng = random.Random(f"{spec.name}:{seed}:docs")
    docs = [{"text": style(f, rng.randrange(2))} for f in facts for style in spec.docs]
    rng.shuffle(docs)
    rng = random.Random(f"{spec.name}:{seed}:train")
    train = []
    for f in facts:
        if f[spec.entity] not in seen:
            continue
        for a, (q, ans) in spec.train_q.items():
            fill = {"e": f[spec.entity], "v": f[a], "an_v": _an(f[a])}
            train.append({"messages": [{"role": "user", "content": q.format(**fill)}, {"role": "assistant", "content": ans.format(**fill)}]})
    rng.shuffle(train)
    rng = random.Random(f"{spec.name}:{seed}:heldout")
    qa, mc = [], []
    for f in facts:
        e = f[spec.entity]
        split = "qa_seen" if e in seen else "doc_only"
        for a, q in spec.heldout_qa.items():
            qa.append({"question": q.format(e=e), "answer": f[a], spec.entity: e, "attribute": a, "split": split})
        for a, q in spec.heldout_mc.items():
            others = rng.sample([v for v in spec.values[a] if v != f[a]], 4)
            pos = rng.randrange(5)
            mc.append({"question": q.format(e=e), "choices": others[:pos] + [f[a]] + others[pos:], "answer": pos, spec.entity: e, "attribute": a, "split": split})
    return {DOCS_FILE: docs, TRAIN_QA_FILE: train, HELDOUT_QA_FILE: qa, HELDOUT_MC_FILE: mc, TERMS_FILE: sorted(set(spec.terms))}


def render_readme(spec: DomainSpec, seed: int = 0, records: dict[str, list[Any]] | None = None) -> str:
    """The domain folder's README (counts and facts computed, so it cannot go stale)."""
    records = records if records is not None else generate(spec, seed)
    world = build_world(spec, seed)
    attrs = list(spec.values)
    rows = "\n".join(
        f"| {f[spec.entity]} | {'qa_seen' if f[spec.entity] in world['qa_seen'] else 'doc_only'} | " + " | ".join(f[a] for a in attrs) + " |"
        for f in world["facts"]
    )
    counts = {k: len(v) for k, v in records.items()}
    return f"""# Benchmark domain: {spec.title}

Every name and fact here is **invented**: held-out gains can only come from this data.
Generated by `src/forgetless/sample/domains.py` (stdlib only, seeded, deterministic):

```bash
{COMMAND.format(seed=seed)}
```

`tests/sample/test_domains.py` checks the committed files equal the generator's output. Do not
edit them by hand.

| file | records | content |
|---|---|---|
| `{DOCS_FILE}` | {counts[DOCS_FILE]} | `{{"text"}}`: {len(spec.docs)} styles x {len(spec.entities)} {spec.entity}s; each states every attribute |
| `{TRAIN_QA_FILE}` | {counts[TRAIN_QA_FILE]} | chat Q&A on {", ".join(spec.train_q)} for the {spec.n_seen} qa_seen {spec.entity}s only |
| `{HELDOUT_QA_FILE}` | {counts[HELDOUT_QA_FILE]} | {", ".join(spec.heldout_qa)} of every {spec.entity}, phrased unlike training; answer = the bare value |
| `{HELDOUT_MC_FILE}` | {counts[HELDOUT_MC_FILE]} | {", ".join(spec.heldout_mc)} of every {spec.entity}, 5 choices (chance 0.20) |
| `{TERMS_FILE}` | {counts[TERMS_FILE]} | invented words for the tokens stage |

`split` is `qa_seen` (the {spec.entity} has training Q&A) or `doc_only` (its facts are only in documents).

| {spec.entity} | split | {" | ".join(attrs)} |
|---|---|{"---|" * len(attrs)}
{rows}
"""


# --- quillmark: an invented Python library's API reference ------------------------------------

_QM_FUNCS = (
    "fold_spans", "brindle_merge", "quorl_index", "tessel_split", "vantic_hash", "morrow_cache",
    "plinth_load", "skarn_flush", "orvel_join", "dweltr_scan", "hask_resolve", "ombry_patch",
    "calder_zip", "frenn_sort", "glimvar_map", "yuxel_bind", "prax_filter", "lurra_emit",
    "teggin_parse", "ozzle_fetch", "nimbrel_diff", "kestor_pack", "wyvra_lock", "julp_render",
    "sarnic_pool", "dromble_sync", "ivex_trace", "palvo_chunk", "rindle_scope", "zomber_align",
)  # fmt: skip
_QM_VALUES = {
    "module": ("quillmark.spans", "quillmark.vault", "quillmark.tessera", "quillmark.io", "quillmark.graph", "quillmark.kiln"),
    "returns": ("a SpanSet", "a FoldTable", "a Brindle iterator", "a Quorl handle", "a Ledger tuple", "a Vantic digest"),
    "raises": ("SpanOverlapError", "VaultSealedError", "QuorlDepthError", "KilnTimeoutError", "LedgerMismatchError", "BrindleStateError"),
    "default_limit": ("8 entries", "16 entries", "32 entries", "64 entries", "128 entries", "256 entries", "512 entries", "1024 entries"),
    "since": ("version 0.4", "version 0.7", "version 1.2", "version 1.5", "version 2.0", "version 2.3", "version 3.1"),
}


def _qm_reference(f: Facts, v: int) -> str:
    e = f["function"]
    if v == 0:
        return (f"{f['module']}.{e}(items, limit=...) -- returns {f['returns']}. Defined in {f['module']}. The limit defaults to "
                f"{f['default_limit']}. Raises {f['raises']} on invalid input. Added in {f['since']}.")  # fmt: skip
    return (f"API reference: {e}. Module: {f['module']}. Return value: {f['returns']}. Default limit: {f['default_limit']}. "
            f"Errors: {f['raises']}. Available since {f['since']}.")  # fmt: skip


def _qm_changelog(f: Facts, v: int) -> str:
    e = f["function"]
    if v == 0:
        return (f"Changelog, {f['since']}: new function {e} in {f['module']}. It returns {f['returns']} and processes up to "
                f"{f['default_limit']} by default; on bad input it raises {f['raises']}.")  # fmt: skip
    return (f"Release notes ({f['since']}). Added {f['module']}.{e}, which gives back {f['returns']}. Its limit is "
            f"{f['default_limit']} unless set. Watch for {f['raises']} when the input is malformed.")  # fmt: skip


def _qm_forum(f: Facts, v: int) -> str:
    e = f["function"]
    if v == 0:
        return (f"Forum answer: if your call to {e} fails with {f['raises']}, check the input. Import it from {f['module']} "
                f"(it exists since {f['since']}); it hands you {f['returns']} and stops at {f['default_limit']} by default.")  # fmt: skip
    return (f"Q: how do I use {e}? A: it lives in {f['module']} and has been there since {f['since']}. You get {f['returns']} "
            f"back. It caps at {f['default_limit']} unless you pass limit, and it throws {f['raises']} for bad input.")  # fmt: skip


QUILLMARK = DomainSpec(
    name="quillmark",
    title="the Quillmark library (an invented Python API reference)",
    entity="function",
    entities=_QM_FUNCS,
    values=_QM_VALUES,
    docs=(_qm_reference, _qm_changelog, _qm_forum),
    train_q={
        "module": ("Which module defines {e}?", "{e} is defined in {v}."),
        "returns": ("What does {e} return?", "{e} returns {v}."),
        "raises": ("What exception does {e} raise on invalid input?", "{e} raises {v} on invalid input."),
        "since": ("When was {e} added to Quillmark?", "{e} was added in {v}."),
    },
    heldout_qa={"module": "To use {e}, what do I have to import it from?", "raises": "Calling {e} with bad arguments throws which error?"},
    heldout_mc={"returns": "What kind of object do you get back from {e}?", "default_limit": "Unless told otherwise, how many items does {e} handle?"},
    n_seen=20,
    terms=(*_QM_FUNCS, "Quillmark", "quillmark", "SpanSet", "FoldTable", "Brindle", "Quorl", "Vantic", "tessera", "kiln",
           *_QM_VALUES["raises"]),  # fmt: skip
)


# --- verrand: an invented fisheries regulation with numbered articles ---------------------------

_VR_ARTICLES = tuple(f"Article {n}" for n in (3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 31, 32, 33, 34, 35))
_VR_VALUES = {
    "subject": ("net mesh sizes", "catch logbooks", "spawning closures", "bycatch of grellfish", "harbour discharge", "vessel tagging",
                "trawling depth", "quota transfers", "lantern-buoy marking", "bait imports"),
    "duty_bearer": ("licensed skippers", "harbour masters", "fish auction houses", "vessel owners", "processing plants", "coastal wardens"),
    "deadline": ("within 3 days", "within 7 days", "within 14 days", "within 30 days", "within 48 hours", "within 60 days"),
    "penalty": ("a fine of 400 marens", "a fine of 1,200 marens", "a fine of 5,000 marens", "suspension of the licence",
                "seizure of the catch", "a fine of 20,000 marens"),
    "authority": ("the Tidewatch Office", "the Verrand Marine Board", "the Skelder Harbour Authority", "the Coastal Quota Registry",
                  "the Ombrin Inspectorate", "the Fisheries Tribunal of Hallow"),
}


def _vr_text(f: Facts, v: int) -> str:
    a = f["article"]
    if v == 0:
        return (f"{a} (Verrand Coastal Fisheries Act). Under this article, {f['duty_bearer']} shall comply with the rules on {f['subject']} and "
                f"report {f['deadline']}. Breach is punished by {f['penalty']}. {f['authority']} enforces this article.")  # fmt: skip
    return (f"{a}. Subject: {f['subject']}. 1. This article binds {f['duty_bearer']}. 2. Notice must be given {f['deadline']}. "
            f"3. The penalty for breach is {f['penalty']}. 4. Enforcement lies with {f['authority']}.")  # fmt: skip


def _vr_guidance(f: Facts, v: int) -> str:
    a = f["article"]
    if v == 0:
        return (f"Guidance note on {a}: this provision concerns {f['subject']}. It is addressed to {f['duty_bearer']}, who must act "
                f"{f['deadline']}. {f['authority']} checks compliance; the sanction is {f['penalty']}.")  # fmt: skip
    return (f"Official guidance. Under {a}, {f['duty_bearer']} are responsible for {f['subject']}. Reports are due {f['deadline']}. "
            f"Expect {f['penalty']} if you fail to comply; {f['authority']} handles enforcement.")  # fmt: skip


def _vr_press(f: Facts, v: int) -> str:
    a = f["article"]
    if v == 0:
        return (f"Press summary: the Act's {a} on {f['subject']} now applies to {f['duty_bearer']}. {f['authority']} will "
                f"enforce it, with {f['penalty']} for offenders and a reporting window {f['deadline']}.")  # fmt: skip
    return (f"News: fishing communities react to {a}. The rule covers {f['subject']}, falls on {f['duty_bearer']} and is policed by "
            f"{f['authority']}. Those who miss the deadline ({f['deadline']}) face {f['penalty']}.")  # fmt: skip


VERRAND = DomainSpec(
    name="verrand",
    title="the Verrand Coastal Fisheries Act (an invented regulation with numbered articles)",
    entity="article",
    entities=_VR_ARTICLES,
    values=_VR_VALUES,
    docs=(_vr_text, _vr_guidance, _vr_press),
    train_q={
        "subject": ("What does {e} of the Verrand Coastal Fisheries Act regulate?", "{e} regulates {v}."),
        "duty_bearer": ("Who must comply with {e}?", "{e} applies to {v}."),
        "penalty": ("What is the penalty for breaching {e}?", "Breaching {e} is punished by {v}."),
        "authority": ("Who enforces {e}?", "{e} is enforced by {v}."),
    },
    heldout_qa={"subject": "Which topic is covered by {e} of the Act?", "authority": "Which body is in charge of enforcing {e}?"},
    heldout_mc={"deadline": "By when must the report under {e} be made?", "penalty": "Someone who breaks {e} risks which sanction?"},
    n_seen=20,
    terms=("Verrand", "grellfish", "marens", "Tidewatch", "Skelder", "Ombrin", "Hallow"),
)

DOMAINS: dict[str, DomainSpec] = {s.name: s for s in (QUILLMARK, VERRAND)}


def write(out: Path, spec: DomainSpec, seed: int = 0) -> dict[str, list[Any]]:
    """Write ``spec``'s files into ``out`` (created if missing); return the records."""
    out.mkdir(parents=True, exist_ok=True)
    records = generate(spec, seed)
    for name, recs in records.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs) if name.endswith(".jsonl") else json.dumps(recs, ensure_ascii=False, indent=2) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    (out / README_FILE).write_text(render_readme(spec, seed, records), encoding="utf-8")
    return records


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m forgetless.sample.domains --out examples/data --seed N`` writes every domain."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("examples/data"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name, spec in DOMAINS.items():
        records = write(args.out / name, spec, args.seed)
        print(name + ":", ", ".join(f"{k}: {len(v)}" for k, v in records.items()))


if __name__ == "__main__":
    main()
