"""Config section for the tokens stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TokensConfig(BaseModel):
    """Domain vocabulary extension."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Add domain tokens before training.")
