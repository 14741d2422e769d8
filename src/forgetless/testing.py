"""Tiny randomly initialised models and a word-level tokenizer, built in code, for fast tests.

A 2-layer Llama with a 32-wide hidden state trains a step in milliseconds, and a word-level
tokenizer makes hand-worked expected token ids and labels possible in tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "system user assistant you are a helpful the of is what which and to in it for on with as "
    "capital france paris one two three four five six seven eight nine ten plus minus equals "
    "drug zorvanex treats marrowick syndrome dose mg side effect blue vision made by acme "
    "question answer yes no hello world def return print python code cat dog red green"
).split()

# A ChatML-style template, like SmolLM2's: masking tests hand-work labels against it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


# The plain frame's labels (forgetless.promptformat), appended so the other ids do not move.
PLAIN_WORDS = ["System:", "Question:", "Answer:", "<bos>"]


def tiny_tokenizer(*, plain: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` with a ChatML-like chat template.

    ``plain=True``: a base model's tokenizer instead: no chat template, a BOS token, and the plain
    frame's labels in the vocabulary.
    """
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + (PLAIN_WORDS if plain else []))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    # Chat markers are matched before whitespace splitting, as in real chat tokenizers.
    tk.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token=None
    )
    if plain:
        from tokenizers import processors

        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
        return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token="<bos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (the GPT-2 / SmolLM2 kind) trained in code on :data:`WORDS`.

    Same chat template and chat markers as :func:`tiny_tokenizer`; what GGUF export needs, since
    llama.cpp has no word-level tokenizer.
    """
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    # Every word with and without its leading space, so each becomes one token where the vocabulary allows.
    tk.train_from_iterator([" ".join(WORDS), "\n".join(WORDS)] * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(vocab_size: int | None = None, *, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    """A 2-layer Llama with tied embeddings (like SmolLM2), randomly initialised with ``seed``."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(SPECIALS) + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=3,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


def save_tiny_model(folder: str | Path, *, seed: int = 0, bpe: bool = False) -> Path:
    """Write a tiny model + tokenizer folder that ``forgetless.models.load_model`` accepts as a local path.

    ``bpe``: a byte-level BPE tokenizer (:func:`tiny_bpe_tokenizer`) instead of the word-level one.
    """
    folder = Path(folder)
    tok = tiny_bpe_tokenizer() if bpe else tiny_tokenizer()
    model = tiny_model(len(tok), seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def tiny_gemma3(vocab_size: int, *, seed: int = 0) -> torch.nn.Module:
    """A 2-layer Gemma 3 (q_norm/k_norm, one sliding-window and one full-attention layer), random."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=0, eos_token_id=3, bos_token_id=vocab_size - 1,
    )  # fmt: skip
    return Gemma3ForCausalLM(cfg).eval()


def save_tiny_base_model(folder: str | Path, *, seed: int = 0) -> Path:
    """A tiny *base* model folder like the embedded gemma3-270m: Gemma 3 architecture and a
    tokenizer without a chat template (so every stage uses the plain Question:/Answer: frame)."""
    folder = Path(folder)
    tok = tiny_tokenizer(plain=True)
    assert tok.convert_tokens_to_ids("<bos>") == len(tok) - 1
    model = tiny_gemma3(len(tok), seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
