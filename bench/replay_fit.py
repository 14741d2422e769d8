"""Does a run's KL term hold the base's behaviour in general, or only on the replay rows it trains?

For a run folder and some of its checkpoints: the replay pool (the base's answers to the built-in
replay prompts, or data.replay) split into the examples this run's dataset trained every epoch and
the ones it never drew. Per checkpoint, KL(base || tuned) per answer token (full vocabulary, fp32)
on each group, next to the run's own in-loop figures. If the drawn group drifts much less than the
never-drawn one, the KL term fits those rows, and the controller's replay signal reads less drift
than the general prompts show.

    python bench/replay_fit.py runs/verrand/forgetless-default 75 150 225

With ``train.replay_rotate`` the epochs rotate through the whole pool and every example is trained
in turn; the split is then between two sets of trained examples, and a ratio near 1 says neither
is fitted more than the other.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from forgetless import artifacts as A
from forgetless.adapter import adapter_off, attach_run_adapter
from forgetless.data import IGNORE, Tokenized
from forgetless.lmhead import kl_per_position
from forgetless.pipeline import load_base, load_data, self_replay
from forgetless.runfolder import read_run_folder
from forgetless.train.dataset import draw_replay, tokenize_all


@torch.no_grad()
def kl_per_token(model: Any, items: list[Tokenized]) -> float:
    """KL(base || tuned) per answer token over ``items`` (base = the adapter disabled), fp32."""
    total, n = 0.0, 0
    for t in items:
        ids = torch.tensor([t.input_ids])
        mask = torch.tensor(t.labels[1:]) != IGNORE
        with adapter_off(model):
            base = model(input_ids=ids).logits[0, :-1][mask]
        total += kl_per_position(base, model(input_ids=ids).logits[0, :-1][mask]).sum().item()
        n += int(mask.sum())
    return total / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder (config.resolved.yaml, metrics.jsonl, checkpoints/)")
    ap.add_argument("steps", type=int, nargs="+", help="checkpoint steps to measure")
    args = ap.parse_args()
    console = Console(stderr=True)
    folder = read_run_folder(args.run)
    cfg = folder.config
    data = load_data(cfg, Path(tempfile.mkdtemp()), console)
    base = load_base(cfg)
    pool_examples = self_replay(base, console) if data.replay is None else data.replay

    # The same draw build_dataset makes (one epoch's draw, with train.replay_rotate).
    kw = {"max_length": cfg.data.max_length, "system_prompt": cfg.data.system_prompt}
    domain, pool = tokenize_all(base.tok, data.examples, **kw), tokenize_all(base.tok, pool_examples, **kw, as_replay=True)
    drawn = set(draw_replay(sum(len(t.input_ids) for t in domain), [len(t.input_ids) for t in pool], cfg.train.replay_ratio, seed=cfg.seed))
    never = [i for i in range(len(pool)) if i not in drawn]
    print(f"{args.run}: replay pool {len(pool)} examples; drawn {len(drawn)}, never drawn {len(never)}")
    evals = {h["step"]: h for h in folder.metrics() if "general/kl" in h}
    print("| step | KL weight | replay KL (in loop, since the last evaluation) | drawn: KL/token | never drawn: KL/token | never / drawn | general prompts: KL/token (in loop) |")
    print("|---|---|---|---|---|---|---|")
    model = None
    for step in args.steps:
        ckpt = args.run / A.CHECKPOINTS_DIR / f"checkpoint-{step}"
        if model is None:
            model = attach_run_adapter(base.model, ckpt, base.tok)
        else:
            model.load_adapter(str(ckpt), adapter_name="default", is_trainable=False)
        model.eval()
        d, u = kl_per_token(model, [pool[i] for i in sorted(drawn)]), kl_per_token(model, [pool[i] for i in never])
        h = evals.get(step, {})
        f = lambda k: f"{h[k]:.4f}" if isinstance(h.get(k), (int, float)) else ""  # noqa: E731
        print(f"| {step} | {f('kl_control/weight')} | {f('train/replay_kl')} | {d:.4f} | {u:.4f} | {u / d:.2f} | {f('general/kl')} |", flush=True)


if __name__ == "__main__":
    main()
