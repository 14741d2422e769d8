"""The versioned suite files: well-formed, reproducible, and their reference answers are right."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from forgetless.errors import InputError
from forgetless.evaluate.codesuite import extract_code, load_code_tasks, program_for
from forgetless.evaluate.data import make_math
from forgetless.evaluate.knowledge import KNOWLEDGE_MC, MCItem, items_from_records, load_mc, pick
from forgetless.evaluate.mathsuite import MATH_FILE, load_math
from forgetless.evaluate.metrics import numeric_match
from forgetless.evaluate.sandbox import run_python


def test_math_file_is_exactly_what_the_seeded_script_writes() -> None:
    assert MATH_FILE.read_text(encoding="utf-8") == make_math.render(make_math.generate())
    items = load_math()
    assert len(items) >= 100 and len({i.prompt for i in items}) == len(items)
    # The answer is never readable off the question, so echoing the question never scores.
    for it in items:
        assert not numeric_match(it.prompt, it.answer), it


def test_knowledge_mc_file() -> None:
    items = load_mc(KNOWLEDGE_MC)
    assert len(items) >= 100
    assert Counter(i.category for i in items).keys() == {"knowledge", "commonsense"}
    assert len({i.question for i in items}) == len(items)
    # Answer positions are spread out, so a model that always picks "A" scores near chance.
    counts = Counter(i.answer for i in items)
    assert max(counts.values()) < 0.35 * len(items)


def test_load_mc_errors_name_file_line_and_field(tmp_path: Path) -> None:
    p = tmp_path / "mc.jsonl"
    p.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n{"question": "q2", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(InputError) as e:
        load_mc(p)
    assert (e.value.line, e.value.field) == (2, "answer")
    p.write_text('{"question": "q", "choices": "ab", "answer": 0}\n')
    with pytest.raises(InputError, match="choices"):
        load_mc(p)
    p.write_text('{"question": "q", "choices": ["a", "b"], "answer": true}\n')
    with pytest.raises(InputError, match="answer"):
        load_mc(p)
    recs = [{"question": "q", "choices": ["a", "b"], "answer": 1, "split": "doc_only"}]
    assert items_from_records(recs) == [MCItem("0", "q", ("a", "b"), 1, "doc_only")]


def test_pick_normalisations_hand_worked() -> None:
    # Choice 0: 'ab' with log-prob -2 over 1 token; choice 1: 'abcdef' with -3 over 3 tokens.
    scores, choices = [(-2.0, 1), (-3.0, 3)], ["ab", "abcdef"]
    assert pick(scores, choices, "none") == 0  # -2 > -3
    assert pick(scores, choices, "token") == 1  # -1 per token beats -2
    assert pick(scores, choices, "char") == 1  # -0.5 per char beats -1


def test_code_tasks_canonical_solutions_pass_their_tests() -> None:
    tasks = load_code_tasks()
    assert len(tasks) >= 30 and len({t.entry_point for t in tasks}) == len(tasks)
    # All canonical solutions and tests in one sandboxed program: one subprocess, not forty.
    program = "\n".join(program_for(t, t.canonical_solution) for t in tasks)
    r = run_python(program, timeout_s=20)
    assert r.passed, r.stderr
    # And the tests can fail: a wrong solution does not pass.
    wrong = run_python(program_for(tasks[0], f"def {tasks[0].entry_point}(*args):\n    return None\n"))
    assert not wrong.passed


def test_extract_code_keeps_code_and_drops_prose() -> None:
    answer = "def add(a, b):\n    return a + b\n\nThis function adds two numbers.\nprint(add(1, 2))\n"
    assert extract_code(answer) == "def add(a, b):\n    return a + b\n"
    assert extract_code("def f():\n    return 1\n```\nmore text") == "def f():\n    return 1\n"
