"""Router evaluation: Wilson intervals, per-kind rates and AUROC, the shipped neighbour sets."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import forgetless
from forgetless.serve.router import Router
from forgetless.serve.routereval import format_router_report, load_neighbours, route_scores, router_report, wilson_interval

DATA = Path(forgetless.__file__).parent / "serve" / "data"


def test_wilson_interval_hand_worked():
    # 9/10: p = 0.9, z^2 = 3.8415; centre (0.9 + 0.19207) / 1.38415 = 0.78898,
    # half-width 1.96 * sqrt(0.009 + 0.0096037) / 1.38415 = 0.19314.
    lo, hi = wilson_interval(9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-4)
    assert hi == pytest.approx(0.9821, abs=1e-4)
    lo, hi = wilson_interval(0, 20)  # never zero-width at the edge
    assert lo == 0.0 and hi == pytest.approx(3.8415 / (20 + 3.8415), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_router_report_rates_confusion_and_auroc():
    r = Router(method="mahalanobis", threshold=1.0)
    rep = router_report(r, {
        "domain": np.array([0.1, 0.5, 0.9, 1.5]),      # 3 of 4 stay on the adapter (1.5 > 1.0)
        "general": np.array([2.0, 3.0, 0.8]),          # 2 of 3 to the base
        "neighbour/vet": np.array([0.2, 0.3]),         # both to the adapter: 0 of 2 to the base
    })  # fmt: skip
    assert rep["confusion"] == {"domain": {"adapter": 3, "base": 1}, "general": {"adapter": 1, "base": 2},
                                "neighbour/vet": {"adapter": 2, "base": 0}}  # fmt: skip
    assert rep["kinds"]["domain"]["rate"] == 0.75 and rep["kinds"]["domain"]["expected"] == "adapter"
    assert rep["kinds"]["general"]["rate"] == pytest.approx(2 / 3)
    # general vs domain pairs (12): 2.0 and 3.0 beat all 4 (8), 0.8 beats 0.1 and 0.5 (2) -> 10/12.
    assert rep["kinds"]["general"]["auroc"] == pytest.approx(10 / 12)
    # vet vs domain (8 pairs): 0.2 beats 0.1, 0.3 beats 0.1 -> 2/8.
    assert rep["kinds"]["neighbour/vet"]["auroc"] == pytest.approx(2 / 8)
    assert rep["kinds"]["neighbour/vet"]["rate"] == 0.0
    lines = format_router_report(rep)
    assert any(line.startswith("| neighbour/vet | 2 | base | 0.000 [0.000, ") for line in lines)


def test_neighbour_sets_are_shipped_distinct_and_regenerate_byte_for_byte(tmp_path):
    sets = load_neighbours()
    assert set(sets) == {"veterinary", "legal"}
    for qs in sets.values():
        assert len(qs) >= 40 and len(set(qs)) == len(qs)
    subprocess.run([sys.executable, str(DATA / "make_neighbours.py"), str(tmp_path)], check=True, capture_output=True)
    for f in ("neighbour_vet.v1.jsonl", "neighbour_legal.v1.jsonl"):
        assert (tmp_path / f).read_bytes() == (DATA / f).read_bytes()


def test_route_scores_of_no_texts_is_empty():
    # The router is never called: a run without multiple-choice items routes an empty MC set.
    class Unused:
        def score(self, *a, **k):
            raise AssertionError("router called on an empty set")

    out = route_scores(Unused(), None, None, [])
    assert out.shape == (0,) and out.dtype == np.float64
