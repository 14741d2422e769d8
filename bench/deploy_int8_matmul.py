"""One decode row through each int8/fp32 matmul on this CPU: where the int8 speed comes from.

    PYTHONPATH=src .venv/bin/python bench/deploy_int8_matmul.py [--threads 1,2] [--repeats 200]

SmolLM2-135M's three matrix shapes (attention/MLP in and out, the 49152-row LM head), a batch of
one row, microseconds per call (median of 5 timings of ``--repeats`` calls each): fp32 and bf16
``F.linear``, and ``aten._weight_int8pack_mm`` (int8 weights, one scale per row) on fp32 and on
bf16 activations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def timed(f, repeats: int) -> float:
    """Median over 5 timings of the mean microseconds per call."""
    f()
    out = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            f()
        out.append((time.perf_counter() - t0) / repeats * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    print("| threads | shape (out x in) | fp32 us | bf16 us | int8 w, fp32 act us | int8 w, bf16 act us | int8 bf16 act vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for out_f, in_f in ((1536, 576), (576, 1536), (49152, 576)):
            w = torch.randn(out_f, in_f)
            scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
            q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            x = torch.randn(1, in_f)
            wb, xb, sb = w.bfloat16(), x.bfloat16(), scale.bfloat16()
            r = [
                timed(lambda: F.linear(x, w), args.repeats),
                timed(lambda: F.linear(xb, wb), args.repeats),
                timed(lambda: torch.ops.aten._weight_int8pack_mm(x, q, scale), args.repeats),
                timed(lambda: torch.ops.aten._weight_int8pack_mm(xb, q, sb), args.repeats),
            ]
            print(f"| {threads} | {out_f} x {in_f} | " + " | ".join(f"{v:.1f}" for v in r) + f" | {r[0] / r[3]:.2f}x |")


if __name__ == "__main__":
    main()
