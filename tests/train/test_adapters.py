"""Attaching the adapter: trainable parameters by mode, and no third-party deprecation noise."""

from __future__ import annotations

import warnings

from peft import LoraConfig, get_peft_model

from forgetless.testing import tiny_model
from forgetless.train.adapters import attach_adapter, trainable_parameters
from forgetless.train.config import LoraSettings


def _future_warnings(fn) -> list[str]:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]


def test_lora_wrapping_does_not_print_the_checkpointing_deprecation() -> None:
    """Plain ``get_peft_model`` reads transformers' deprecated ``is_gradient_checkpointing`` (one
    FutureWarning per run); ``attach_adapter`` silences only that message."""
    plain = _future_warnings(lambda: get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"])))
    ours = _future_warnings(lambda: attach_adapter(tiny_model(), LoraSettings(r=2, alpha=4, target_modules=["q_proj"])))
    assert any("is_gradient_checkpointing" in m for m in plain), "PEFT no longer reads the deprecated name: peft_wrapping can go"
    assert not any("is_gradient_checkpointing" in m for m in ours)


def test_lora_trains_the_adapter_only_and_full_trains_everything() -> None:
    m = attach_adapter(tiny_model(), LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))
    trainable, total = trainable_parameters(m)
    # q_proj is 32 x 32 on the tiny model, 2 layers: A (2 x 32) + B (32 x 2) per layer.
    assert trainable == 2 * (2 * 32 + 32 * 2)
    full = attach_adapter(tiny_model(), LoraSettings(mode="full"))
    t, n = trainable_parameters(full)
    assert t == n == total - trainable
