"""The versioned general-prompt file that general KL to base is measured on."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import forgetless.evaluate

DATA = Path(forgetless.evaluate.__file__).parent / "data" / "general_prompts.v1.jsonl"
CATEGORIES = {"knowledge", "reasoning", "math", "code", "everyday"}


def test_general_prompts_file_is_valid() -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 100
    for r in rows:
        assert set(r) == {"id", "category", "prompt"}, r
        assert r["category"] in CATEGORIES, r
        assert isinstance(r["prompt"], str) and 5 <= len(r["prompt"]) <= 200, r
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), "ids must be unique"
    assert len({r["prompt"] for r in rows}) == len(rows), "prompts must be unique"
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == CATEGORIES and min(counts.values()) >= 24, counts


def test_general_prompts_prefix_is_balanced() -> None:
    # general_limit takes a prefix, so the first few prompts must cover every category.
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert {r["category"] for r in rows[:5]} == CATEGORIES
