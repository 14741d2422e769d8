"""Generate ``math.v1.jsonl``: easy arithmetic and one-step word problems, from a fixed seed.

Run ``python src/forgetless/evaluate/data/make_math.py`` to rebuild the file byte for byte
(tests check that it does). The problems are deliberately easy: a 135M model gets a fair share
right, so a fine-tune that breaks arithmetic shows up as a drop instead of staying at zero.

Rules that keep exact match on the parsed number meaningful: no operand is 0 or 1, and the answer
never equals an operand (so echoing the question back never scores), and never appears in the
question text at all.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

SEED = 20261128
PER_KIND = 20
OUT = Path(__file__).with_name("math.v1.jsonl")
INSTRUCTION = "Answer with just the number."

NAMES = ["Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jin", "Kai", "Lea"]
THINGS = ["apples", "books", "pencils", "stickers", "marbles", "cookies", "stamps", "shells"]


def _add(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(2, 40), r.randint(2, 20)
    return f"What is {a} + {b}?", a + b


def _sub(r: random.Random) -> tuple[str, int]:
    a = r.randint(12, 60)
    b = r.randint(2, a - 2)
    return f"What is {a} - {b}?", a - b


def _mul(r: random.Random) -> tuple[str, int]:
    a, b = r.randint(2, 9), r.randint(2, 10)
    return f"What is {a} * {b}?", a * b


def _word_more(r: random.Random) -> tuple[str, int]:
    n, t = r.choice(NAMES), r.choice(THINGS)
    a, b = r.randint(2, 15), r.randint(2, 15)
    return f"{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?", a + b


def _word_less(r: random.Random) -> tuple[str, int]:
    n, t = r.choice(NAMES), r.choice(THINGS)
    a = r.randint(8, 30)
    b = r.randint(2, a - 3)
    return f"{n} had {a} {t} and gave away {b}. How many {t} are left?", a - b


def _word_groups(r: random.Random) -> tuple[str, int]:
    t = r.choice(THINGS)
    a, b = r.randint(2, 6), r.randint(2, 9)
    return f"There are {a} boxes with {b} {t} in each box. How many {t} are there in total?", a * b


KINDS: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "word_more": _word_more,
    "word_less": _word_less,
    "word_groups": _word_groups,
}


def _ok(question: str, answer: int) -> bool:
    # The answer must not be readable off the question (see the module docstring).
    nums = {int(tok) for tok in question.replace("?", " ").split() if tok.isdigit()}
    return answer not in nums and str(answer) not in question


def generate(seed: int = SEED, per_kind: int = PER_KIND) -> list[dict[str, object]]:
    """The problem list: ``per_kind`` unique problems of each kind, interleaved by kind."""
    r = random.Random(seed)
    by_kind: dict[str, list[dict[str, object]]] = {}
    for kind, make in KINDS.items():
        seen: set[str] = set()
        rows: list[dict[str, object]] = []
        while len(rows) < per_kind:
            q, a = make(r)
            if q in seen or not _ok(q, a):
                continue
            seen.add(q)
            rows.append({"kind": kind, "question": q, "answer": a})
        by_kind[kind] = rows
    # Interleave kinds so any prefix (the in-loop subset) covers every kind.
    out = []
    for i in range(per_kind):
        for kind in KINDS:
            row = by_kind[kind][i]
            out.append({"id": f"math-{len(out) + 1:03d}", **row, "prompt": f"{row['question']} {INSTRUCTION}"})
    return out


def render(rows: list[dict[str, object]]) -> str:
    """JSONL text of the rows (one object per line)."""
    return "".join(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    target.write_text(render(generate()), encoding="utf-8")
    print(f"wrote {target}")
