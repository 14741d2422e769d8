"""Config section for the tokens stage (the ``tokens:`` block of a run config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TokensConfig(BaseModel):
    """Domain vocabulary extension: which terms to add, how to initialise them, how to train them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Add domain tokens before training.")
    terms_file: Path | None = Field(
        None,
        description="JSON list of terms (or a .txt file, one term a line) to add. None: pick the top_k terms from the training data.",
    )
    top_k: int = Field(
        64, ge=1, description="How many terms to pick from the training data when no terms_file is given (each adds up to 2 tokens)."
    )
    min_count: int = Field(2, ge=1, description="A picked term must occur at least this many times in the training data.")
    min_pieces: int = Field(
        3, ge=2, description="A picked term must split into at least this many pieces today (fewer: little to gain)."
    )
    init: Literal["pieces", "mean"] = Field(
        "pieces",
        description=(
            "Initial value of each new row (input and output). 'pieces': mean of the term's current pieces "
            "(keeps its meaning; step-0 KL on general text stays far below log(1+k/V) on average). "
            "'mean': mean of all rows (Hewitt 2021; guarantees that bound at every position, but the new token starts meaningless)."
        ),
    )
    lr: float = Field(
        1e-3, gt=0, description="Learning rate of the new embedding rows (their own optimizer group, no weight decay)."
    )
