"""Config section for the curate stage (the ``curate:`` section of a run config).

Every filter has its own knob and its own reject reason, and each can be switched off (0 or None),
so a user who disagrees with one rule keeps the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CurateConfig(BaseModel):
    """Cleaning, deduplication, diversity checks and replay mixing before training."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the curate stage on data.train before training.")

    # --- cleaning --------------------------------------------------------------------------------
    strip_html: bool = Field(
        True, description="Remove HTML tags and decode entities (&nbsp;, &amp;); text inside ``` code fences is left alone."
    )
    boilerplate_min_docs: int = Field(
        5,
        ge=0,
        description="A line repeated in at least this many multi-line records (headers, footers, navigation) is removed (0: off).",
    )
    boilerplate_min_share: float = Field(
        0.002, ge=0, le=1, description="...and in at least this share of all records, so large corpora need a real pattern."
    )

    # --- quality filters (each has its own reject reason) ------------------------------------------
    min_words: int = Field(5, ge=0, description="Reject records with fewer words after cleaning: reason 'too_short' (0: off).")
    max_words: int = Field(
        100_000, ge=0, description="Reject records with more words: reason 'too_long' (0: off). Long-but-sane records are only flagged."
    )
    max_symbol_ratio: float | None = Field(
        0.5,
        ge=0,
        description="Reject when symbols (#$%&*+<=>@\\^_`|~{}[]) per word exceed this, outside code fences: reason 'symbol_ratio' (None: off).",
    )
    max_repeated_line_ratio: float | None = Field(
        0.3,
        ge=0,
        le=1,
        description="Reject when this share of a record's lines (4+ lines) are repeats of earlier lines: reason 'repeated_lines' (None: off).",
    )

    # --- deduplication ---------------------------------------------------------------------------
    exact_dedup: bool = Field(True, description="Drop records whose normalized text (case, punctuation, spacing) was seen before.")
    near_dedup: bool = Field(True, description="Drop near-duplicates found with MinHash LSH (rensa) and confirmed on the signatures.")
    shingle_size: int = Field(4, ge=1, description="Words per shingle. 3-4 suit short documents; 5 is common for web pages.")
    threshold: float = Field(0.6, gt=0, le=1, description="Estimated Jaccard similarity of shingle sets at or above which records are near-duplicates.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more is a more precise similarity estimate, slower.")
    seed: int = Field(1, description="MinHash seed.")
    workers: int = Field(
        # Pass 2 (clean + filter + hash + sign) is ~80% of curate's time and parallel per record.
        # Small inputs stay in-process: each worker takes ~0.5 s to start (see curate/workers.py).
        0, ge=0, description="Processes for the clean + sign pass: 0 = one per CPU core when the input is over 8 MiB, 1 = in-process.",
    )

    # --- flags (kept records, listed in the report) --------------------------------------------------
    flag_short_ratio: float = Field(0.25, ge=0, description="Flag 'short' below this multiple of the median length in words.")
    flag_long_ratio: float = Field(4.0, ge=0, description="Flag 'long' above this multiple of the median length in words.")
    rare_term_max_docs: int = Field(
        1, ge=0, description="Flag 'rare_term' when a capitalised or alphanumeric term occurs in at most this many records (0: off)."
    )

    # --- diversity report --------------------------------------------------------------------------
    diversity_sample: int = Field(5_000, ge=100, description="Records (uniform reservoir sample) the diversity metrics are computed on.")
    template_min_share: float = Field(0.1, gt=0, le=1, description="A shared prefix or skeleton covering this share of records is reported as a template.")
    template_min_count: int = Field(5, ge=2, description="...and at least this many records.")
    dominance_share: float = Field(
        0.5, gt=0, le=1, description="Warn loudly when one template or near-duplicate cluster covers this share of the data."
    )

    # --- replay mixing ---------------------------------------------------------------------------
    replay: Literal["none", "file", "self"] = Field(
        "none",
        description="Mix general 'replay' records into the output: from replay_file, or the base model's own answers to general prompts ('self').",
    )
    replay_file: Path | None = Field(None, description="Replay data (text, messages or prompt/response JSONL) when replay: file.")
    replay_ratio: float = Field(0.2, ge=0, lt=1, description="Share of replay records in the mixed output.")
    replay_max_new_tokens: int = Field(96, ge=8, description="Answer length for self-generated replay.")
    replay_batch_size: int = Field(16, ge=1, description="Prompts per generation batch for self-generated replay.")

    @model_validator(mode="after")
    def _check(self) -> CurateConfig:
        if self.replay == "file" and self.replay_file is None:
            raise ValueError("replay: file needs replay_file")
        if self.max_words and self.min_words and self.max_words < self.min_words:
            raise ValueError("max_words must be >= min_words")
        return self
