"""The adapter switch: one way, for every stage, to run a tuned model as its base.

The base is the same weights with the adapter disabled: no second copy is ever in memory. The
evaluator (base scores), the KL-to-base term, the serving router (out-of-domain queries) and the
pipeline's router calibration all go through :func:`adapter_off`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


def is_peft(model: Any) -> bool:
    """True if ``model`` is a PEFT wrapper, so its base is reachable by disabling the adapter."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def adapter_off(model: Any) -> AbstractContextManager[Any]:
    """Context in which ``model`` runs as its base: the adapter disabled for a PEFT model (a flag,
    no copy); a plain model already is its base."""
    return model.disable_adapter() if is_peft(model) else nullcontext()
