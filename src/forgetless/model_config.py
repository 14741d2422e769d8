"""Which base model to fine-tune: the settings every stage reads, with no torch import.

Curate (replay generation), tokens, train, evaluate, serve and deploy all load the same base; its
settings live here, below every stage, so no stage has to reach into another for them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelConfig(BaseModel):
    """Which base model to fine-tune."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        DEFAULT_MODEL,
        description="'smollm2-135m-instruct' (embedded, offline) or any Hugging Face model id or local folder.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype. float32 keeps fp32 master weights (train.precision adds bf16 autocast); bfloat16 halves memory on GPU."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with a hub repo. Off: it executes arbitrary Python."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a model id.")
