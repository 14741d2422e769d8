"""A tiny byte-level BPE tokenizer (GPT-2 / SmolLM2 style), trained in code, for fast tokens-stage tests.

The word-level tokenizer in :mod:`forgetless.testing` never splits a word, so it cannot show
fertility or how added tokens interact with a byte-level pre-tokenizer; this one does, in ~50 ms.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..testing import CHAT_TEMPLATE

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "what is the capital of france? paris is the capital of france",
    "a helpful assistant answers the question with a short answer",
    "one two three four five six seven eight nine ten",
    "hello world, this is a small corpus for a small tokenizer",
    "the drug treats the syndrome at a dose of ten mg daily",
]


def tiny_bpe_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :data:`CORPUS`: common words are whole, rare ones split."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 5, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token=None)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_bpe_model(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny Llama + :func:`tiny_bpe_tokenizer` folder that ``load_model`` / ``load_tokenizer`` accept."""
    from ..testing import tiny_model

    folder = Path(folder)
    tok = tiny_bpe_tokenizer()
    tiny_model(len(tok), seed=seed).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
