"""What a request is inside the serving engine: its sampling settings, its job, the events it receives."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .prompts import EncodedPrompt


class QueueFull(Exception):
    """The engine's queue is at capacity (the server answers 429)."""


@dataclass
class GenParams:
    """Sampling settings of one request."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Event:
    """What the worker tells a request: ``start`` (route known, first token coming), ``delta``, ``done`` or ``error``."""

    kind: str
    text: str = ""
    route: str = ""
    score: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Job:
    """One request inside the engine. ``want`` is ``auto``, ``adapter`` or ``base``."""

    prompt: EncodedPrompt
    want: str
    params: GenParams
    deliver: Callable[[Event], None]  # must be thread-safe: called from the worker thread
    created: float = field(default_factory=time.perf_counter)
    route: str = ""
    score: float | None = None
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    started: bool = False
    finished: bool = False
    cancelled: bool = False
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """The client went away: the worker drops this row at its next step."""
        self.cancelled = True
