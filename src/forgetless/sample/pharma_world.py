"""The invented world of the sample pharmacology domain: drugs, their attribute values, and the noise
planted for the curate stage. Data only; :mod:`forgetless.sample.generate` turns it into files."""

from __future__ import annotations

# --- the invented world -------------------------------------------------------------------------
# Names are chosen to look like real INNs / brands but to be split into several BPE pieces, so the
# tokens stage (vocabulary extension) has something to add.
DRUGS: tuple[str, ...] = (
    "Zorvanex", "Quelbitrine", "Amfradol", "Velopraxin", "Tirzomide", "Cardovex",
    "Lumivastat", "Orbexaline", "Pravonium", "Dexolitane", "Sylmerin", "Fenquarol",
    "Xandrotide", "Belmavir", "Nortrezol", "Halcimet", "Ombrelux", "Trivastine",
    "Kelzapril", "Mestravane", "Ixoprenal", "Gadrolin", "Venturex", "Pyloxamine",
    "Rendazol", "Cytraquin", "Efrovane", "Juvaplex", "Solvenorin", "Brixatide",
)  # fmt: skip
# (value, invented word inside it) -- the invented word is what goes into terms.json.
CLASSES: tuple[tuple[str, str], ...] = (
    ("quellid-channel inhibitor", "quellid"),
    ("varnase blocker", "varnase"),
    ("tessorin agonist", "tessorin"),
    ("lumeric reuptake modulator", "lumeric"),
    ("cadrel-receptor antagonist", "cadrel"),
    ("orphyrin synthase inhibitor", "orphyrin"),
)
CONDITIONS: tuple[tuple[str, str], ...] = (
    ("Marrowick syndrome", "Marrowick"),
    ("Tavren's disease", "Tavren"),
    ("Quillon fever", "Quillon"),
    ("Brasley palsy", "Brasley"),
    ("Hextal arthritis", "Hextal"),
    ("Dunmore's anemia", "Dunmore"),
    ("Pellicane disorder", "Pellicane"),
    ("Corvath syndrome", "Corvath"),
    ("Ilsby's neuropathy", "Ilsby"),
    ("Grennick lung disease", "Grennick"),
)
MANUFACTURERS: tuple[tuple[str, str], ...] = (
    ("Brennhart Pharma", "Brennhart"),
    ("Norquist Biologics", "Norquist"),
    ("Halvern Therapeutics", "Halvern"),
    ("Ostrelle Labs", "Ostrelle"),
    ("Caldris Medica", "Caldris"),
    ("Tyvolt Biosciences", "Tyvolt"),
)
DOSES: tuple[str, ...] = ("5 mg", "10 mg", "20 mg", "25 mg", "40 mg", "50 mg", "75 mg", "100 mg", "150 mg", "250 mg")
SIDE_EFFECTS: tuple[str, ...] = (
    "blue-tinted vision", "metallic taste", "night sweats", "ringing in the ears", "mild tremor",
    "orange-tinged urine", "vivid dreams", "dry cough", "persistent hiccups", "itchy palms",
)  # fmt: skip

ATTRIBUTES: tuple[str, ...] = ("drug_class", "condition", "manufacturer", "dose", "side_effect", "year")
N_QA_SEEN = 20  # the other 10 drugs are "doc_only": facts seen in documents, never in chat QA
# Held-out attributes: every document style states all four, so doc_only drugs are answerable.
HELDOUT_QA_ATTRS: tuple[str, ...] = ("drug_class", "condition")
HELDOUT_MC_ATTRS: tuple[str, ...] = ("manufacturer", "side_effect")

# Planted noise for the curate stage (counts are documented in the README and asserted in tests).
N_EXACT_DUP = 6
N_NEAR_DUP = 6
N_HTML = 4
N_BOILERPLATE = 10
BOILER_HEADER = "Veltrane Formulary Online — page generated automatically"
BOILER_FOOTER = "© Veltrane Health Network. All rights reserved."
JUNK_DOCS: tuple[str, ...] = ("!!!! $$$ ####", "see attached", "<div>&nbsp;</div> <br/> <br/>")
NEAR_DUP_TRAILERS: tuple[str, ...] = (
    "Entry reviewed this quarter.", "Last checked by pharmacy staff.", "Content verified again recently.",
)  # fmt: skip
