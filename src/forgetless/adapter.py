"""The adapter switch: one way, for every stage, to run a tuned model as its base.

The base is the same weights with the adapter disabled: no second copy is ever in memory. The
evaluator (base scores), the KL-to-base term, the serving router (out-of-domain queries) and the
pipeline's router calibration all go through :func:`adapter_off`. Loading a finished run's
adapter onto its base (with the run's own tokenizer) is :func:`attach_run_adapter`, for serve,
evaluate and deploy alike.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model_config import ModelConfig


def is_peft(model: Any) -> bool:
    """True if ``model`` is a PEFT wrapper, so its base is reachable by disabling the adapter."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def adapter_off(model: Any) -> AbstractContextManager[Any]:
    """Context in which ``model`` runs as its base: the adapter disabled for a PEFT model (a flag,
    no copy); a plain model already is its base."""
    return model.disable_adapter() if is_peft(model) else nullcontext()


def run_tokenizer(adapter_dir: Path | None, model: ModelConfig) -> Any:
    """A run's tokenizer: the adapter folder's own if it holds one (a tokens-stage run's extended
    vocabulary lives there), else the base model's."""
    from .models import load_tokenizer

    if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").exists():
        return load_tokenizer(str(adapter_dir))
    return load_tokenizer(model.name, trust_remote_code=model.trust_remote_code, revision=model.revision)


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Context for wrapping a model in PEFT without transformers' deprecation notice.

    PEFT's wrapper reads ``model.is_gradient_checkpointing``, which transformers 5.x renamed and
    warns about on every read: a FutureWarning in every run that the user can do nothing about.
    Only that message is silenced, only while wrapping.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def attach_run_adapter(base: Any, adapter_dir: Path, tok: Any, *, adapter_name: str = "default") -> Any:
    """``base`` with a run's adapter loaded (eval mode, not trainable). A tokens-stage run added
    vocabulary: the embeddings grow to the tokenizer first, or the adapter's saved rows do not fit."""
    from peft import PeftModel

    if len(tok) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tok))
    with peft_wrapping():
        return PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name, is_trainable=False).eval()
