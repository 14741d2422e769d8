"""The shipped sample domain: deterministic, committed files in sync, and structurally sound."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from forgetless.sample import generate as gen

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "pharma"


@pytest.fixture(scope="module")
def rec() -> dict[str, list]:
    return gen.generate(0)


@pytest.fixture(scope="module")
def world() -> dict:
    return gen.build_world(0)


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def test_deterministic_and_seed_sensitive() -> None:
    assert gen.generate(0) == gen.generate(0)
    assert gen.render_readme(0) == gen.render_readme(0)
    # The seed must actually matter (a generator ignoring it would pass the line above).
    assert gen.generate(1)["docs.jsonl"] != gen.generate(0)["docs.jsonl"]


def test_committed_files_match_generator(rec: dict[str, list]) -> None:
    for name, records in rec.items():
        text = (DATA / name).read_text(encoding="utf-8")
        if name.endswith(".jsonl"):
            assert [json.loads(line) for line in text.splitlines()] == records, name
            expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            assert json.loads(text) == records, name
            expected = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
        assert text == expected, f"{name} drifted: rerun {gen.COMMAND.format(seed=0)}"
    assert (DATA / "README.md").read_text(encoding="utf-8") == gen.render_readme(0, rec)


def test_write_roundtrip(tmp_path: Path) -> None:
    gen.main(["--out", str(tmp_path), "--seed", "0"])
    for name in (*gen.generate(0), "README.md"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_world_shape(world: dict) -> None:
    facts = world["facts"]
    assert len(facts) == 30 and len({f["drug"] for f in facts}) == 30
    assert len(world["qa_seen"]) == 20 and len(world["doc_only"]) == 10
    assert set(world["qa_seen"]).isdisjoint(world["doc_only"])
    # Values repeat across drugs (plausible MC distractors) but each attribute has >= 5 values.
    for attr in gen.ATTRIBUTES:
        values = Counter(f[attr] for f in facts)
        assert len(values) >= 5, attr
        if attr != "year":
            assert max(values.values()) >= 2, attr


def test_train_qa(rec: dict[str, list], world: dict) -> None:
    train = rec["train_qa.jsonl"]
    assert 60 <= len(train) <= 80
    facts = {f["drug"]: f for f in world["facts"]}
    per_drug: Counter[str] = Counter()
    for r in train:
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        mentioned = [d for d in facts if d in user["content"]]
        assert len(mentioned) == 1, user["content"]
        drug = mentioned[0]
        per_drug[drug] += 1
        assert drug in world["qa_seen"], f"doc_only drug {drug} leaked into train_qa"
        # Short and factual: the answer contains one of the drug's true values.
        assert len(assistant["content"].split()) <= 15
        assert any(facts[drug][a] in assistant["content"] for a in gen.ATTRIBUTES), assistant["content"]
    assert set(per_drug) == set(world["qa_seen"])
    assert all(3 <= n <= 4 for n in per_drug.values())
    assert len({json.dumps(r) for r in train}) == len(train)


def test_heldout_qa(rec: dict[str, list], world: dict) -> None:
    qa = rec["heldout_qa.jsonl"]
    facts = {f["drug"]: f for f in world["facts"]}
    assert Counter(r["drug"] for r in qa) == {d: 2 for d in facts}
    for r in qa:
        assert set(r) == {"question", "answer", "drug", "attribute", "split"}
        assert r["answer"] == facts[r["drug"]][r["attribute"]]
        assert r["split"] == ("qa_seen" if r["drug"] in world["qa_seen"] else "doc_only")
        assert r["drug"] in r["question"]


def test_heldout_mc(rec: dict[str, list], world: dict) -> None:
    mc = rec["heldout_mc.jsonl"]
    facts = {f["drug"]: f for f in world["facts"]}
    assert Counter(r["drug"] for r in mc) == {d: 2 for d in facts}
    positions = Counter()
    for r in mc:
        truth = facts[r["drug"]][r["attribute"]]
        assert len(r["choices"]) == 5 and len(set(r["choices"])) == 5
        assert 0 <= r["answer"] < 5 and r["choices"][r["answer"]] == truth
        # Distractors are real values of the same attribute (for other drugs), never the truth.
        pool = {f[r["attribute"]] for f in facts.values()}
        assert set(r["choices"]) <= pool and r["choices"].count(truth) == 1
        assert r["split"] == ("qa_seen" if r["drug"] in world["qa_seen"] else "doc_only")
        positions[r["answer"]] += 1
    # Answer position is randomised, not stuck in one slot.
    assert len(positions) == 5 and max(positions.values()) < len(mc) / 2


def test_heldout_questions_never_in_training(rec: dict[str, list]) -> None:
    train_q = {r["messages"][0]["content"].strip().lower() for r in rec["train_qa.jsonl"]}
    train_text = " ".join(r["messages"][0]["content"] for r in rec["train_qa.jsonl"]).lower()
    for r in rec["heldout_qa.jsonl"] + rec["heldout_mc.jsonl"]:
        q = r["question"].strip().lower()
        assert q not in train_q
        # Different templates, not just different drugs: the question minus the drug name differs.
        stem = q.replace(r["drug"].lower(), "{drug}")
        assert all(stem != t.replace(d.lower(), "{drug}") for t in train_q for d in gen.DRUGS if d.lower() in t)
    assert train_text  # guard: the comparison above ran against something


def test_heldout_answers_learnable_from_docs(rec: dict[str, list], world: dict) -> None:
    docs = [r["text"] for r in rec["docs.jsonl"]]
    for r in rec["heldout_qa.jsonl"] + rec["heldout_mc.jsonl"]:
        answer = r["answer"] if isinstance(r["answer"], str) else r["choices"][r["answer"]]
        about = [t for t in docs if r["drug"] in t]
        assert len(about) >= 3, r["drug"]
        assert any(answer in t for t in about), (r["drug"], answer)
    # doc_only facts must be stated in *every* style, so any surviving doc after dedup teaches them.
    for f in world["facts"]:
        clean = [t for t in docs if f["drug"] in t and "<" not in t and gen.BOILER_HEADER not in t]
        for t in clean:
            for attr in (*gen.HELDOUT_QA_ATTRS, *gen.HELDOUT_MC_ATTRS):
                assert f[attr] in t, (f["drug"], attr, t)


def test_planted_noise_counts(rec: dict[str, list]) -> None:
    docs = [r["text"] for r in rec["docs.jsonl"]]
    n_clean = 3 * len(gen.DRUGS)
    assert len(docs) == n_clean + gen.N_EXACT_DUP + gen.N_NEAR_DUP + len(gen.JUNK_DOCS)
    counts = Counter(docs)
    assert sorted(counts.values(), reverse=True)[: gen.N_EXACT_DUP + 1] == [2] * gen.N_EXACT_DUP + [1]
    assert sum(1 for t in docs if "<div" in t or "&nbsp;" in t) == gen.N_HTML + 1  # +1: a junk record
    header = [t for t in docs if t.startswith(gen.BOILER_HEADER + "\n")]
    footer = [t for t in docs if t.endswith("\n" + gen.BOILER_FOOTER)]
    assert len(header) == len(footer) == gen.N_BOILERPLATE
    assert sum(1 for t in docs if len(t.split()) <= 3) == len(gen.JUNK_DOCS)
    # Near-duplicates: exactly N_NEAR_DUP distinct pairs are very similar, and every other pair of
    # distinct docs is clearly dissimilar -- so a dedup threshold between the two is unambiguous.
    uniq = sorted(set(docs))
    sims = sorted(
        (_jaccard(_shingles(a), _shingles(b)) for a, b in itertools.combinations(uniq, 2)), reverse=True
    )
    assert all(s >= 0.6 for s in sims[: gen.N_NEAR_DUP])
    assert sims[gen.N_NEAR_DUP] < 0.5


def test_clean_doc_lengths(rec: dict[str, list]) -> None:
    lengths = [len(r["text"].split()) for r in rec["docs.jsonl"] if len(r["text"].split()) > 3]
    assert min(lengths) >= 20 and max(lengths) <= 60


def test_terms(rec: dict[str, list]) -> None:
    terms = rec["terms.json"]
    assert terms == sorted(set(terms))
    assert set(gen.DRUGS) <= set(terms)
    text = " ".join(r["text"] for r in rec["docs.jsonl"])
    assert all(t in text for t in terms)  # every term actually occurs in the corpus
