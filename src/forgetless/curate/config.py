"""Config section for the curate stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CurateConfig(BaseModel):
    """Cleaning and deduplication before training."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the curate stage on data.train before training.")
