"""Generate the neighbouring-specialty question sets the router is evaluated against.

The sample domain is a fictional human pharmacology (the Veltrane formulary). Real traffic to a
specialist model also holds questions from *neighbouring* specialties: they share vocabulary and
question shapes with the domain ("what is the dose of X", "which company makes X") but their
facts are not in the adapter, so they belong on the base. Two such specialties are invented here,
each with its own names so no fact overlaps the pharmacology:

* ``neighbour_vet.v1.jsonl``: a fictional veterinary formulary (animal drugs, species, dosing by
  body weight). The nearest neighbour: the same question shapes as the domain.
* ``neighbour_legal.v1.jsonl``: a fictional legal code (the Arlenmark Civil Code: sections,
  limitation periods, penalties, courts). Further away, but just as jargon-heavy.

Every record is ``{"id", "domain", "prompt"}``. Run
``python src/forgetless/serve/data/make_neighbours.py`` to rebuild both files byte for byte
(tests check that it does).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

SEED = 20261202
PER_DOMAIN = 48
HERE = Path(__file__).parent
VET_FILE = "neighbour_vet.v1.jsonl"
LEGAL_FILE = "neighbour_legal.v1.jsonl"

# --- veterinary formulary (invented) ------------------------------------------------------------
VET_DRUGS = ("Felvoxin", "Caniprazole", "Equitrane", "Bovarelin", "Ovimectol", "Pelladox", "Rumenquil",
             "Avistatin", "Porcidrone", "Lagomycin", "Hestrovane", "Mardoquin")  # fmt: skip
SPECIES = ("dogs", "cats", "horses", "cattle", "sheep", "pigs", "rabbits", "ferrets", "goats", "parrots")
VET_CONDITIONS = ("Hollis mange", "Tavistock colic", "Brenner hoof rot", "Quarrow kennel cough", "Dellin mastitis",
                  "Furrow fly strike", "Ostley lungworm")  # fmt: skip
VET_MAKERS = ("Greyfield Animal Health", "Kestrel Vet Pharma", "Moorland Veterinary Labs", "Pasture Biologics")
WEIGHTS = ("4 kg", "8 kg", "12 kg", "25 kg", "40 kg", "450 kg", "600 kg")
VET_TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"What is the dose of {r.choice(VET_DRUGS)} for a {r.choice(WEIGHTS)} animal?",
    lambda r: f"How many mg per kg of {r.choice(VET_DRUGS)} should {r.choice(SPECIES)} receive?",
    lambda r: f"Is {r.choice(VET_DRUGS)} safe to give to {r.choice(SPECIES)}?",
    lambda r: f"Which company makes the veterinary drug {r.choice(VET_DRUGS)}?",
    lambda r: f"What is {r.choice(VET_DRUGS)} used to treat in {r.choice(SPECIES)}?",
    lambda r: f"Which drug is licensed for {r.choice(VET_CONDITIONS)} in {r.choice(SPECIES)}?",
    lambda r: f"What is the meat withdrawal period after treating {r.choice(SPECIES)} with {r.choice(VET_DRUGS)}?",
    lambda r: f"What side effects does {r.choice(VET_DRUGS)} cause in {r.choice(SPECIES)}?",
    lambda r: f"Can {r.choice(VET_DRUGS)} be mixed into the feed for {r.choice(SPECIES)}?",
    lambda r: f"How often should {r.choice(SPECIES)} with {r.choice(VET_CONDITIONS)} be dosed?",
    lambda r: f"Which drug class does {r.choice(VET_DRUGS)} belong to, and is it approved by {r.choice(VET_MAKERS)}?",
    lambda r: f"What is the first-line treatment for {r.choice(VET_CONDITIONS)}?",
)

# --- a fictional legal code ---------------------------------------------------------------------
CODE_NAMES = ("the Arlenmark Civil Code", "the Arlenmark Penal Code", "the Arlenmark Tenancy Act", "the Arlenmark Companies Act")
TOPICS = ("adverse possession", "a breach of a lease", "a defective product claim", "unpaid wages", "a boundary dispute",
          "a contested will", "insider dealing", "a noise nuisance")  # fmt: skip
COURTS = ("the Veldhaven District Court", "the Arlenmark High Court", "the Court of Tolmere Appeals", "a Pellin magistrate")
SECTIONS = tuple(range(3, 240, 7))
LEGAL_TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"What does section {r.choice(SECTIONS)} of {r.choice(CODE_NAMES)} say?",
    lambda r: f"What is the limitation period for {r.choice(TOPICS)} under {r.choice(CODE_NAMES)}?",
    lambda r: "Which court hears claims about {}: {} or {}?".format(r.choice(TOPICS), *r.sample(COURTS, 2)),
    lambda r: f"What penalty does {r.choice(CODE_NAMES)} set for {r.choice(TOPICS)}?",
    lambda r: f"Under section {r.choice(SECTIONS)}, who bears the burden of proof in {r.choice(TOPICS)}?",
    lambda r: f"Can a ruling of {r.choice(COURTS)} on {r.choice(TOPICS)} be appealed?",
    lambda r: f"Which section of {r.choice(CODE_NAMES)} covers {r.choice(TOPICS)}?",
    lambda r: f"How many days does a defendant have to answer a claim for {r.choice(TOPICS)} in {r.choice(COURTS)}?",
    lambda r: f"Was section {r.choice(SECTIONS)} of {r.choice(CODE_NAMES)} amended, and when?",
    lambda r: f"What remedy is available for {r.choice(TOPICS)} under {r.choice(CODE_NAMES)}?",
)


def _make(templates: tuple[Callable[[random.Random], str], ...], domain: str, prefix: str, r: random.Random) -> list[dict[str, str]]:
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    i = 0
    while len(out) < PER_DOMAIN:
        q = templates[i % len(templates)](r)
        i += 1
        if q in seen:
            continue
        seen.add(q)
        out.append({"id": f"{prefix}-{len(out) + 1:03d}", "domain": domain, "prompt": q})
    return out


def generate() -> dict[str, list[dict[str, str]]]:
    """Both question sets, fully determined by :data:`SEED`."""
    r = random.Random(SEED)
    return {
        VET_FILE: _make(VET_TEMPLATES, "veterinary", "vet", r),
        LEGAL_FILE: _make(LEGAL_TEMPLATES, "legal", "law", r),
    }


def render(records: list[dict[str, str]]) -> str:
    """JSONL text of ``records`` (one object a line, keys in insertion order)."""
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def main(out: Path = HERE) -> None:
    """Write both files into ``out``."""
    for name, recs in generate().items():
        (out / name).write_text(render(recs), encoding="utf-8")
        print(f"wrote {out / name} ({len(recs)} questions)", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
