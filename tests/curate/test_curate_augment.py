"""Opening + sentence pairs, with hand-worked expected values."""

from __future__ import annotations

from forgetless.curate.augment import augment_documents, opening_pairs, split_sentences
from forgetless.data import Example

NUMBERED = "Article 6. Subject: vessel tagging. 1. This article binds harbour masters. 2. Notice must be given within 60 days. 3. Enforcement lies with the Skelder Board."


def test_split_sentences_joins_markers_and_titles_to_the_next_sentence() -> None:
    # "Article 6." (2 words) and each "N." marker join the sentence after them; "v1.2" is not an end.
    assert split_sentences(NUMBERED) == [
        "Article 6. Subject: vessel tagging.",
        "1. This article binds harbour masters.",
        "2. Notice must be given within 60 days.",
        "3. Enforcement lies with the Skelder Board.",
    ]
    assert split_sentences("Import it since v1.2 of the kit. Ask why? Then go home now.") == [
        "Import it since v1.2 of the kit.",
        "Ask why? Then go home now.",
    ]
    # A short fragment at the very end joins the sentence before it; a lone fragment stays.
    assert split_sentences("The dose is ten mg a day. Done.") == ["The dose is ten mg a day. Done."]
    assert split_sentences("  Hello.  ") == ["Hello."]


def test_opening_pairs() -> None:
    # The opening is the fewest leading sentences holding 6+ words: "Article 6. Subject: vessel
    # tagging." has 5, so the next sentence joins it; each later sentence follows it once.
    assert opening_pairs(NUMBERED) == [
        "Article 6. Subject: vessel tagging. 1. This article binds harbour masters. 2. Notice must be given within 60 days.",
        "Article 6. Subject: vessel tagging. 1. This article binds harbour masters. 3. Enforcement lies with the Skelder Board.",
    ]
    # One sentence after the opening: the document already is such a pair.
    assert opening_pairs("Monograph of the drug Cytraquin here. It treats the Marrowick syndrome.") == []
    assert opening_pairs("Short.") == []


def test_augment_documents_adds_pairs_after_the_originals_and_leaves_chats() -> None:
    doc = Example(text="Monograph of the drug Cytraquin here. It treats the Marrowick syndrome. Its dose is 150 mg daily.", source="docs.jsonl:3", meta={"lang": "en"})
    chat = Example(messages=[{"role": "user", "content": "a. b. c. d. e. f. g."}, {"role": "assistant", "content": "x"}], source="qa.jsonl:1")
    out, added = augment_documents([doc, chat])
    assert added == 2
    assert out[:2] == [doc, chat]
    assert [e.text for e in out[2:]] == [
        "Monograph of the drug Cytraquin here. It treats the Marrowick syndrome.",
        "Monograph of the drug Cytraquin here. Its dose is 150 mg daily.",
    ]
    assert [e.source for e in out[2:]] == ["docs.jsonl:3#pair1", "docs.jsonl:3#pair2"]
    assert out[2].meta == {"lang": "en", "augmented": "opening_pair"} and doc.meta == {"lang": "en"}
