"""OpenAI wire format: request bodies, response bodies and error JSON.

Only what the server implements is accepted; an OpenAI parameter it cannot honour (``n > 1``,
``logprobs``, ``tools``, ...) is a 400 naming the parameter, never silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

# Parameters of the OpenAI API this server does not implement: asking for them is an error.
UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format",
               "logit_bias", "best_of", "suffix")  # fmt: skip
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          503: "server_error"}  # fmt: skip


class APIError(Exception):
    """An error answered as OpenAI-style JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The JSON response for this error."""
        return error_response(self.status, self.message, param=self.param, code=self.code, type_=self.type, headers=headers)


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None, type_: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    """OpenAI-style error JSON with ``status``."""
    t = type_ or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": t, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _Request(BaseModel):
    # Unknown keys are kept (extra="allow") so :func:`check_unsupported` can name them; keys that
    # are neither known nor unsupported (``user``, ``metadata``) are harmless and ignored.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 (the default here) is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    # torch.Generator.manual_seed takes exactly this range; anything else must be a 400, not a 500.
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)

    def stop_list(self) -> list[str]:
        """``stop`` as a list of non-empty strings."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def check_unsupported(self) -> None:
        """400 for OpenAI parameters this server does not implement."""
        if self.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        extra = self.model_extra or {}
        for key in UNSUPPORTED:
            if extra.get(key) not in (None, False, [], {}):
                raise APIError(400, f"'{key}' is not supported by this server", param=key)
        if len(self.stop_list()) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")

    def include_usage(self) -> bool:
        """Whether a streaming client asked for a final usage chunk."""
        return bool((self.stream_options or {}).get("include_usage"))


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are accepted."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat turn. ``developer`` (the newer name of ``system``) is treated as ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def as_dict(self) -> dict[str, str]:
        """``{"role", "content"}`` with the content as one string, ready for the chat template."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_Request):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    """Body of ``POST /v1/completions`` (one prompt string)."""

    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, description="OpenAI's default for completions.")
    echo: bool = False

    def prompt_text(self) -> str:
        """The single prompt; a list must hold exactly one string."""
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            return self.prompt[0]
        return self.prompt

    def check_unsupported(self) -> None:
        """As :meth:`_Request.check_unsupported`, plus ``echo``."""
        super().check_unsupported()
        if self.echo:
            raise APIError(400, "'echo' is not supported by this server", param="echo")


def new_id(prefix: str) -> str:
    """A fresh response id like OpenAI's (``chatcmpl-...``, ``cmpl-...``)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
