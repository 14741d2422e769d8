"""Seeded generator for the shipped sample domain: a fictional pharmacology ("Veltrane" formulary).

Every drug, drug class, disease and company here is invented, so the base model cannot know any
of the facts: a gain on the held-out sets after fine-tuning can only come from the documents.
The generator is stdlib-only and fully determined by ``seed`` (one ``random.Random``, no set or
dict-order dependence), so the committed files under ``examples/data/pharma`` can be checked
byte-for-byte against :func:`generate` and can never silently drift.

Regenerate with::

    python -m forgetless.sample.generate --out examples/data/pharma --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

# The invented world (names, facts, planted noise) is data: it lives in pharma_world.py.
from .pharma_world import DRUGS, CLASSES, CONDITIONS, MANUFACTURERS, DOSES, SIDE_EFFECTS, ATTRIBUTES, N_QA_SEEN, HELDOUT_QA_ATTRS, HELDOUT_MC_ATTRS, N_EXACT_DUP, N_NEAR_DUP, N_HTML, N_BOILERPLATE, BOILER_HEADER, BOILER_FOOTER, JUNK_DOCS, NEAR_DUP_TRAILERS  # noqa: F401 (re-exported: tests and sibling generators read them from here)

DOCS_FILE = "docs.jsonl"
TRAIN_QA_FILE = "train_qa.jsonl"
HELDOUT_QA_FILE = "heldout_qa.jsonl"
HELDOUT_MC_FILE = "heldout_mc.jsonl"
TERMS_FILE = "terms.json"
README_FILE = "README.md"
COMMAND = "python -m forgetless.sample.generate --out examples/data/pharma --seed {seed}"


def _an(phrase: str) -> str:
    """Indefinite article + phrase ("an orphyrin ...", "a varnase ...")."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _poss(name: str) -> str:
    """English possessive ("Tyvolt Biosciences'", "Caldris Medica's")."""
    return name + ("'" if name.endswith("s") else "'s")


# --- document templates -------------------------------------------------------------------------
# Three styles x two variants; every template states class, condition, manufacturer, dose and side
# effect (the held-out attributes must be learnable from any single surviving doc after dedup).
def _monograph(f: dict[str, Any], variant: int) -> str:
    d = f["drug"]
    if variant == 0:
        return (
            f"{d} (formulary monograph). Class: {f['drug_class']}. Indication: {f['condition']}. "
            f"Usual adult dose: {f['dose']} daily. Supplier: {f['manufacturer']}. "
            f"Characteristic adverse effect: {f['side_effect']}. Approved {f['year']}."
        )
    return (
        f"Monograph: {d}. {_an(f['drug_class']).capitalize()} indicated for {f['condition']}. "
        f"Marketed by {f['manufacturer']} since {f['year']}. Standard dosing is {f['dose']} once a day. "
        f"Its most characteristic side effect is {f['side_effect']}."
    )


def _clinical(f: dict[str, Any], variant: int, age: int) -> str:
    d = f["drug"]
    if variant == 0:
        return (
            f"Clinical note: a {age}-year-old with {f['condition']} was started on {d}, "
            f"{_an(f['drug_class'])} from {f['manufacturer']}, at {f['dose']} per day. She later "
            f"described {f['side_effect']}, which is typical of {d}."
        )
    return (
        f"Ward round: {age}-year-old man with known {f['condition']}, tolerating {d} {f['dose']} daily. "
        f"{d} is {_an(f['drug_class'])} made by {f['manufacturer']}. New complaint of "
        f"{f['side_effect']}, an expected effect, so no change today."
    )


def _news(f: dict[str, Any], variant: int) -> str:
    d = f["drug"]
    if variant == 0:
        return (
            f"Bulletin, {f['year']}: regulators approved {d}, {_poss(f['manufacturer'])} new "
            f"{f['drug_class']}, for {f['condition']}. The recommended dose is {f['dose']} a day. "
            f"Trial participants most often reported {f['side_effect']}."
        )
    return (
        f"Health news ({f['year']}). {f['manufacturer']} launched {d}, {_an(f['drug_class'])} for "
        f"{f['condition']}. Doctors should start at {f['dose']} daily. Early users note "
        f"{f['side_effect']}, the drug's best-known side effect."
    )


# --- question templates -------------------------------------------------------------------------
# Training and held-out templates are deliberately disjoint so held-out scores measure recall of the
# fact, not memorisation of a question string.
TRAIN_Q: dict[str, tuple[str, str]] = {
    "drug_class": ("What class of drug is {drug}?", "{drug} is {an_value}."),
    "condition": ("What is {drug} used to treat?", "{drug} is used to treat {value}."),
    "manufacturer": ("Which company makes {drug}?", "{drug} is made by {value}."),
    "side_effect": ("What is the characteristic side effect of {drug}?", "{drug} commonly causes {value}."),
    "dose": ("What is the typical daily dose of {drug}?", "The typical daily dose of {drug} is {value}."),
}
HELDOUT_QA_Q: dict[str, str] = {
    "drug_class": "To which pharmacological class does {drug} belong?",
    "condition": "{drug} is indicated for which disease?",
}
HELDOUT_MC_Q: dict[str, str] = {
    "manufacturer": "Which of these companies manufactures {drug}?",
    "side_effect": "Patients taking {drug} most often report which side effect?",
}


def _balanced(rng: random.Random, values: list[str], n: int) -> list[str]:
    """``n`` values cycling through ``values`` then shuffled: every value is used and repeats.

    Repeats matter: MC distractors are then real answers for *other* drugs, so the model has to
    know which drug goes with which value rather than spotting the odd one out.
    """
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def build_world(seed: int = 0) -> dict[str, Any]:
    """Return the fact table and the qa_seen / doc_only split for ``seed``.

    Keys: ``facts`` (list of per-drug dicts with every attribute, in ``DRUGS`` order),
    ``qa_seen`` and ``doc_only`` (drug names, in ``DRUGS`` order).
    """
    rng = random.Random(seed)
    n = len(DRUGS)
    cols = {
        "drug_class": _balanced(rng, [c for c, _ in CLASSES], n),
        "condition": _balanced(rng, [c for c, _ in CONDITIONS], n),
        "manufacturer": _balanced(rng, [m for m, _ in MANUFACTURERS], n),
        "dose": _balanced(rng, list(DOSES), n),
        "side_effect": _balanced(rng, list(SIDE_EFFECTS), n),
        "year": [str(rng.randint(2004, 2023)) for _ in range(n)],
    }
    facts = [{"drug": d, **{a: cols[a][i] for a in ATTRIBUTES}} for i, d in enumerate(DRUGS)]
    seen = set(rng.sample(DRUGS, N_QA_SEEN))
    return {
        "facts": facts,
        "qa_seen": [d for d in DRUGS if d in seen],
        "doc_only": [d for d in DRUGS if d not in seen],
    }


def _docs(rng: random.Random, facts: list[dict[str, Any]]) -> list[dict[str, str]]:
    clean: list[str] = []
    for f in facts:
        clean.append(_monograph(f, rng.randrange(2)))
        clean.append(_clinical(f, rng.randrange(2), rng.randint(24, 81)))
        clean.append(_news(f, rng.randrange(2)))
    # Disjoint index sets, so each planted defect is isolated and its count is exact.
    picked = rng.sample(range(len(clean)), N_EXACT_DUP + N_NEAR_DUP + N_HTML + N_BOILERPLATE)
    exact = picked[:N_EXACT_DUP]
    near = picked[N_EXACT_DUP : N_EXACT_DUP + N_NEAR_DUP]
    html = picked[N_EXACT_DUP + N_NEAR_DUP : N_EXACT_DUP + N_NEAR_DUP + N_HTML]
    boiler = picked[N_EXACT_DUP + N_NEAR_DUP + N_HTML :]

    texts = list(clean)
    # HTML / boilerplate are applied in place (the doc is still the drug's only copy in that style),
    # so curate must *clean* them, not drop them. Markup goes only at sentence boundaries so every
    # fact string survives verbatim.
    for i in html:
        body = clean[i].replace(". ", ".&nbsp;<br/>", 2)
        texts[i] = f'<div class="entry">{body}</div>'
    for i in boiler:
        texts[i] = f"{BOILER_HEADER}\n{clean[i]}\n{BOILER_FOOTER}"
    extra = [clean[i] for i in exact]
    for i in near:
        # A few words added at sentence boundaries: near-identical, facts intact.
        sents = clean[i].split(". ")
        k = rng.randrange(1, len(sents))
        sents[k] = "Note: " + sents[k]
        extra.append(". ".join(sents) + " " + rng.choice(NEAR_DUP_TRAILERS))
    extra.extend(JUNK_DOCS)
    texts.extend(extra)
    rng.shuffle(texts)
    return [{"text": t} for t in texts]


def _train_qa(rng: random.Random, facts: list[dict[str, Any]], seen: list[str]) -> list[dict[str, Any]]:
    by_drug = {f["drug"]: f for f in facts}
    out = []
    for j, d in enumerate(seen):
        f = by_drug[d]
        # 3-4 attributes per drug (70 pairs; the token budget is tight): class, condition and side
        # effect always, manufacturer for every other drug -- so the MC manufacturer items are half
        # QA-trained and half doc-only even within qa_seen drugs.
        attrs = ["drug_class", "condition", "side_effect"] + (["manufacturer"] if j % 2 == 0 else [])
        for a in attrs:
            q_t, a_t = TRAIN_Q[a]
            value = f[a]
            q = q_t.format(drug=d)
            ans = a_t.format(drug=d, value=value, an_value=_an(value))
            out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]})
    rng.shuffle(out)
    return out


def _heldout(
    rng: random.Random, facts: list[dict[str, Any]], seen: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    split = {d: ("qa_seen" if d in seen else "doc_only") for d in DRUGS}
    pools = {a: sorted({f[a] for f in facts}) for a in HELDOUT_MC_ATTRS}
    qa, mc = [], []
    for f in facts:
        d = f["drug"]
        for a in HELDOUT_QA_ATTRS:
            qa.append(
                {
                    "question": HELDOUT_QA_Q[a].format(drug=d),
                    "answer": f[a],
                    "drug": d,
                    "attribute": a,
                    "split": split[d],
                }
            )
        for a in HELDOUT_MC_ATTRS:
            distractors = rng.sample([v for v in pools[a] if v != f[a]], 4)
            pos = rng.randrange(5)
            choices = distractors[:pos] + [f[a]] + distractors[pos:]
            mc.append(
                {
                    "question": HELDOUT_MC_Q[a].format(drug=d),
                    "choices": choices,
                    "answer": pos,
                    "drug": d,
                    "attribute": a,
                    "split": split[d],
                }
            )
    return qa, mc


def _terms() -> list[str]:
    """Invented words only (real words like "inhibitor" or "Pharma" need no new tokens)."""
    words = list(DRUGS) + [w for table in (CLASSES, CONDITIONS, MANUFACTURERS) for _, w in table]
    return sorted(set(words))


def generate(seed: int = 0) -> dict[str, list[Any]]:
    """Build every data file's records for ``seed``.

    Returns a mapping file name -> records: ``docs.jsonl``, ``train_qa.jsonl``,
    ``heldout_qa.jsonl``, ``heldout_mc.jsonl`` (lists of dicts) and ``terms.json`` (list of str).
    Same seed, same output, on any machine and Python hash seed.
    """
    world = build_world(seed)
    # Separate streams per file: changing one file's recipe doesn't reshuffle the others.
    docs = _docs(random.Random(f"{seed}:docs"), world["facts"])
    train = _train_qa(random.Random(f"{seed}:train"), world["facts"], world["qa_seen"])
    qa, mc = _heldout(random.Random(f"{seed}:heldout"), world["facts"], world["qa_seen"])
    return {
        DOCS_FILE: docs,
        TRAIN_QA_FILE: train,
        HELDOUT_QA_FILE: qa,
        HELDOUT_MC_FILE: mc,
        TERMS_FILE: _terms(),
    }


def render_readme(seed: int = 0, records: dict[str, list[Any]] | None = None) -> str:
    """The data directory's README (counts and the split are computed, so it cannot go stale)."""
    records = records if records is not None else generate(seed)
    world = build_world(seed)
    n_clean = 3 * len(DRUGS)
    counts = {k: len(v) for k, v in records.items()}
    rows = "\n".join(
        f"| {f['drug']} | {'qa_seen' if f['drug'] in world['qa_seen'] else 'doc_only'} | {f['drug_class']} | "
        f"{f['condition']} | {f['manufacturer']} | {f['dose']} | {f['side_effect']} | {f['year']} |"
        for f in world["facts"]
    )
    return f"""# Sample domain: the Veltrane formulary (fictional pharmacology)

Every drug, drug class, disease and company in this directory is **invented**, so a base model
cannot know any of these facts: held-out gains after fine-tuning can only come from the data here.
Generated by `src/forgetless/sample/generate.py` (stdlib only, seeded, deterministic):

```bash
{COMMAND.format(seed=seed)}
```

`tests/sample/test_generate.py` checks the committed files equal `generate({seed})` exactly.
Do not edit these files by hand: change the generator and regenerate.

## World

{len(DRUGS)} drugs, each with a drug class ({len(CLASSES)} values), condition treated ({len(CONDITIONS)}),
manufacturer ({len(MANUFACTURERS)}), typical daily dose ({len(DOSES)}), characteristic side effect
({len(SIDE_EFFECTS)}) and approval year. Values repeat across drugs, so multiple-choice distractors
are real answers for other drugs.

## Files

| file | records | content |
|---|---|---|
| `{DOCS_FILE}` | {counts[DOCS_FILE]} | `{{"text"}}` documents: {n_clean} clean docs ({len(DRUGS)} drugs x 3 styles: formulary monograph, clinical note, news bulletin; ~25-35 words, each states class, condition, manufacturer, dose and side effect) plus planted noise (below), shuffled |
| `{TRAIN_QA_FILE}` | {counts[TRAIN_QA_FILE]} | chat records `{{"messages": [user, assistant]}}` for the {N_QA_SEEN} qa_seen drugs only: class, condition and side effect for each, plus manufacturer for every other one; short one-sentence answers |
| `{HELDOUT_QA_FILE}` | {counts[HELDOUT_QA_FILE]} | `{{"question", "answer", "drug", "attribute", "split"}}`, 2 per drug ({", ".join(HELDOUT_QA_ATTRS)}); answer is the bare gold value; question templates never used in training |
| `{HELDOUT_MC_FILE}` | {counts[HELDOUT_MC_FILE]} | `{{"question", "choices" (5), "answer" (index), "drug", "attribute", "split"}}`, 2 per drug ({", ".join(HELDOUT_MC_ATTRS)}); chance = 0.20 |
| `{TERMS_FILE}` | {counts[TERMS_FILE]} | invented words (drug names, class/disease/company name stems) for the tokens stage |

`split` is `qa_seen` (drug also appears in `{TRAIN_QA_FILE}`) or `doc_only` (facts only in `{DOCS_FILE}`).

### Planted noise in `{DOCS_FILE}` (for the curate stage)

- {N_EXACT_DUP} exact duplicates of clean docs (so {N_EXACT_DUP} texts occur twice);
- {N_NEAR_DUP} near-duplicates (a clean doc with "Note:" inserted before one sentence and a short trailer sentence appended);
- {N_HTML} docs with HTML remnants (`<div class="entry">`, `&nbsp;`, `<br/>`), modified in place;
- {N_BOILERPLATE} docs wrapped in the boilerplate header line `{BOILER_HEADER}` and footer line `{BOILER_FOOTER}`, in place;
- {len(JUNK_DOCS)} junk records: {", ".join(f"`{j}`" for j in JUNK_DOCS)}.

Total: {n_clean} + {N_EXACT_DUP} + {N_NEAR_DUP} + {len(JUNK_DOCS)} = {counts[DOCS_FILE]} records.

## Drugs and facts

qa_seen ({len(world["qa_seen"])}): {", ".join(world["qa_seen"])}

doc_only ({len(world["doc_only"])}): {", ".join(world["doc_only"])}

| drug | split | class | condition | manufacturer | dose | side effect | year |
|---|---|---|---|---|---|---|---|
{rows}
"""


def write(out: Path, seed: int = 0) -> dict[str, list[Any]]:
    """Write all files for ``seed`` into ``out`` (created if missing); return the records."""
    out.mkdir(parents=True, exist_ok=True)
    records = generate(seed)
    for name, recs in records.items():
        if name.endswith(".jsonl"):
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        else:
            text = json.dumps(recs, ensure_ascii=False, indent=2) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    (out / README_FILE).write_text(render_readme(seed, records), encoding="utf-8")
    return records


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m forgetless.sample.generate --out DIR --seed N``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("examples/data/pharma"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    records = write(args.out, args.seed)
    print(", ".join(f"{k}: {len(v)}" for k, v in records.items()), f"-> {args.out}")


if __name__ == "__main__":
    main()
