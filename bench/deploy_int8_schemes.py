"""int8 quality per quantization scheme on a real run: general KL to base and domain score against fp32.

Scores the run's fp32 merged model once, then each int8 scheme built from it (per-tensor,
per-channel, per-channel with the LM head in fp32), on the same two suites ``forgetless quantize``
gates on, and prints one row per scheme with the gate's verdict (``judge_variant``).

    PYTHONPATH=src .venv/bin/python bench/deploy_int8_schemes.py RUN_DIR [--schemes a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import warnings

from forgetless.deploy.quantize import domain_part, judge_variant, score_against_fp32
from forgetless.deploy.variants import INT8_SCHEMES, quantize_int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--schemes", default=",".join(INT8_SCHEMES))
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--general-limit", type=int, default=None, help="general prompts (default: the run's eval.general_limit)")
    ap.add_argument("--domain-limit", type=int, default=0, help="domain QA/MC items (0: all)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    schemes = [s for s in a.schemes.split(",") if s]

    def build(merged, tok):  # type: ignore[no-untyped-def]
        for s in schemes:
            yield s, quantize_int8(merged, a.backend, s), tok

    sc = score_against_fp32(a.run_dir, build, general_limit=a.general_limit, domain_limit=a.domain_limit, progress=lambda d: print(f"  {d}", flush=True))
    rows = [{"scheme": "fp32", **sc.fp32}]
    print(f"\n{a.run_dir}: {sc.general_prompts} general prompts ({sc.general_tokens} tokens), {sc.qa_items} QA + {sc.mc_items} MC items")
    head = f"| scheme | general/kl | KL increase | general/nll | {' | '.join(domain_part(sc.fp32))} | gate |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))

    def line(name: str, s: dict[str, float], verdict: str) -> None:
        dom = " | ".join(f"{s.get(k, float('nan')):.4f}" for k in domain_part(sc.fp32))
        print(f"| {name} | {s['general/kl']:.4f} | {s['general/kl'] - sc.fp32['general/kl']:+.4f} | {s['general/nll']:.4f} | {dom} | {verdict} |")

    line("fp32 (merged)", sc.fp32, "-")
    for name, s in sc.candidates.items():
        ok, why, _ = judge_variant(sc.fp32, s, budget=sc.budget, max_kl_increase=0.01, max_domain_drop=0.02)
        line(f"int8 {name}", s, "pass" if ok else "refused: " + "; ".join(why))
        rows.append({"scheme": name, **s, "gate": ok, "reasons": why})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
