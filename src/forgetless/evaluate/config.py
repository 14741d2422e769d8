"""The evaluation config section: what both suites measure at every checkpoint, and at what cost."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalConfig(_Section):
    """Both suites run at every checkpoint; these knobs trade evaluation time for precision."""

    general_prompts: str = Field(
        "builtin",
        description="'builtin' (forgetless' versioned general prompts) or a JSONL file with 'prompt' and 'category'.",
    )
    general_max_new_tokens: int = Field(
        48, ge=1, description="Length of the base model's cached greedy answers that KL is measured on."
    )
    general_limit: int = Field(0, ge=0, description="Use only the first N general prompts (0: all). Fewer is faster and noisier.")
    domain_limit: int = Field(
        # Evaluation cost independent of the eval-set size: 180 QA + 180 MC items took 64-200 s
        # per in-loop evaluation on CPU. 60 keeps the whole sample domain (60 + 60 items).
        60, ge=0,
        description="Items per domain set (QA, MC, text) scored at each checkpoint: a fixed subset, drawn once with the run's seed and stratified by each record's 'split' and 'attribute' (0: all). The full sets are scored once, on the selected checkpoint.",
    )
    heldout_general: str = Field(
        # Off by default: the base's 128-token answers to 48 prompts cost minutes on CPU the first
        # time (then cached), which the demo's time limit cannot afford. Turn on with 'builtin'.
        "none",
        description="General prompts never used in the loop, scored once on the selected checkpoint: 'none' (off, the default), 'builtin' (48 conversational prompts, written apart from the in-loop set), or a JSONL file with 'prompt'.",
    )
    heldout_max_new_tokens: int = Field(
        128, ge=1, description="Length of the base's answers to the held-out prompts (longer than the loop's, to see drift along the answer)."
    )
    qa_max_new_tokens: int = Field(24, ge=1, description="Generation length for domain QA answers.")
    batch_size: int = Field(
        # 64 holds a whole in-loop subset of 60 QA prompts in one generation batch: the demo's
        # evaluation took 33 s at 64 against 50-55 s at 16 on 2 CPU cores.
        64, ge=1, description="Sequences per forward pass during evaluation."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        # auto: bf16 autocast where bf16 matmuls are fast (CUDA with bf16, CPUs with AMX): ~2x faster
        # evaluation; the base reference is built under the same precision, so a no-op still scores KL 0.
        "auto",
        description="Evaluation precision: auto (bf16 autocast on a bf16 GPU or an AMX CPU, else fp32), fp32 or bf16.",
    )
    kl_topk: int = Field(
        64, ge=1, description="Base log-probs kept per position (plus one bucket for the rest): KL is exact up to the mass outside the top k."
    )
    general_suites: list[Literal["knowledge_mc", "math", "code"]] = Field(
        # Generative suites cost most in the loop (measured: math 24 items + code 8 took ~4x the
        # time of 40 knowledge items on CPU); `forgetless eval` runs all three in full.
        default_factory=lambda: ["knowledge_mc"],
        description="General task suites scored at every checkpoint besides KL drift: knowledge_mc, math, code ([] for KL only, the fastest).",
    )
    suite_limits: dict[str, int] = Field(
        default_factory=lambda: {"math": 16, "code": 8, "knowledge_mc": 40},
        description="Items per general suite in the loop (subsets keep evaluation cheap; `forgetless eval` runs the full suites).",
    )
    served_report: bool = Field(
        # On by default: what users get is the router + adapter + base, and a router that sends
        # general queries to the adapter (or domain ones to the base) changes both scores. It costs
        # a reload and every suite on both sides: 6.5 min on 2 busy cores for the demo-sized run, so
        # the demo turns it off; `forgetless eval --served RUN` gives the same section afterwards.
        True,
        description="At the end of a run, score the served system (router + adapter + base) into served.json and report.md.",
    )
