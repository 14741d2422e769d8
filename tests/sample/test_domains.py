"""The two generated benchmark domains: deterministic, committed files in sync, and sound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetless.sample import domains as D

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.mark.parametrize("spec", list(D.DOMAINS.values()), ids=list(D.DOMAINS))
def test_committed_files_match_generator(spec: D.DomainSpec, tmp_path: Path) -> None:
    assert D.generate(spec, 0) == D.generate(spec, 0)
    assert D.generate(spec, 1)[D.DOCS_FILE] != D.generate(spec, 0)[D.DOCS_FILE]  # the seed matters
    D.write(tmp_path, spec, 0)
    for p in sorted(tmp_path.iterdir()):
        assert (EXAMPLES / spec.name / p.name).read_bytes() == p.read_bytes(), f"{spec.name}/{p.name} drifted: rerun {D.COMMAND.format(seed=0)}"


@pytest.mark.parametrize("spec", list(D.DOMAINS.values()), ids=list(D.DOMAINS))
def test_facts_are_learnable_and_held_out_phrasing_is_new(spec: D.DomainSpec) -> None:
    rec = D.generate(spec, 0)
    world = D.build_world(spec, 0)
    facts = {f[spec.entity]: f for f in world["facts"]}
    docs = [d["text"] for d in rec[D.DOCS_FILE]]
    assert len(docs) == len(spec.docs) * len(spec.entities) and len(set(docs)) == len(docs)
    # Every document states every attribute of its entity (a doc-only fact is in each of its docs).
    for f in world["facts"]:
        mine = [t for t in docs if any(t.count(f[spec.entity] + s) for s in (" ", ".", ",", "(", ")", ":", "?"))]
        assert len(mine) >= len(spec.docs), f[spec.entity]
        for a in spec.values:
            assert sum(f[a] in t for t in mine) >= len(spec.docs), (f[spec.entity], a)
    # Training Q&A covers exactly the qa_seen entities; doc_only ones appear in documents only.
    trained = " ".join(m["content"] for r in rec[D.TRAIN_QA_FILE] for m in r["messages"])
    assert len(world["qa_seen"]) == spec.n_seen and len(world["doc_only"]) == len(spec.entities) - spec.n_seen
    for e in world["doc_only"]:
        assert f"{e} " not in trained and f"{e}?" not in trained and f"{e}." not in trained, e
    # Held-out items: gold answers from the facts, splits right, questions never seen in training.
    train_qs = {r["messages"][0]["content"] for r in rec[D.TRAIN_QA_FILE]}
    for r in rec[D.HELDOUT_QA_FILE]:
        e = r[spec.entity]
        assert r["answer"] == facts[e][r["attribute"]] and r["question"] not in train_qs
        assert r["split"] == ("qa_seen" if e in world["qa_seen"] else "doc_only")
    for r in rec[D.HELDOUT_MC_FILE]:
        assert len(r["choices"]) == 5 and len(set(r["choices"])) == 5
        assert r["choices"][r["answer"]] == facts[r[spec.entity]][r["attribute"]]
    assert set(spec.heldout_qa).isdisjoint(spec.heldout_mc)
    held_templates = {q.format(e="X") for q in (*spec.heldout_qa.values(), *spec.heldout_mc.values())}
    assert held_templates.isdisjoint(q.format(e="X") for q, _ in spec.train_q.values())


def test_bench_layout_loads_with_the_domain_loaders() -> None:
    from forgetless.data import load_examples
    from forgetless.evaluate.domain import load_domain

    for name in D.DOMAINS:
        d = EXAMPLES / name
        assert load_examples([d / D.DOCS_FILE, d / D.TRAIN_QA_FILE])
        dom = load_domain(d / D.HELDOUT_QA_FILE, d / D.HELDOUT_MC_FILE, None)
        assert len(dom.qa) == len(dom.mc) == 60
        assert json.loads((d / D.TERMS_FILE).read_text())
