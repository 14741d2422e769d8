"""Replay data: general examples mixed into domain training so the model keeps its general ability.

Self-generated replay needs no external data: the base model's own greedy answers to ~200 general
prompts (:data:`PROMPTS_FILE`). Training on them pulls the tuned model back towards what the base
would have said. Answers are generated once per (base weights, tokenizer, prompt file, length) and
cached per prompt, so a larger ``n`` later only generates the missing ones.

The prompt file must not overlap the general *evaluation* prompts, or replay would train on the
test set that measures forgetting; ``tests/curate/test_curate_replay.py`` checks this.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress

from ..artifacts import REPLAY_CACHE_DIR
from ..cache import cache_dir
from ..data import record_to_example
from ..errors import InputError
from ..hashing import sha256_file, sha256_json
from ..io import append_jsonl, iter_jsonl
from ..promptformat import PLAIN, cut_at_stop, prompt_format

if TYPE_CHECKING:  # importing transformers costs seconds; curate without replay never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROMPTS_FILE = Path(__file__).parent / "data" / "replay_prompts.v1.jsonl"
REPLAY_KEY = "replay"  # records carrying "replay": true are replay, for the trainer's KL-to-base loss


def load_prompts(path: str | Path = PROMPTS_FILE) -> list[dict[str, str]]:
    """Replay prompts ``{id, category, prompt}`` in round-robin category order, so the first ``n``
    prompts are as varied as ``n`` allows."""
    path = Path(path)
    by_cat: dict[str, list[dict[str, str]]] = {}
    seen: set[str] = set()
    for line, rec in iter_jsonl(path):
        for key in ("id", "prompt"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise InputError("must be a non-empty string", file=path, line=line, field=key)
        if rec["id"] in seen:
            raise InputError(f"duplicate id {rec['id']!r}", file=path, line=line, field="id")
        seen.add(rec["id"])
        by_cat.setdefault(str(rec.get("category", "general")), []).append(rec)
    out: list[dict[str, str]] = []
    queues = list(by_cat.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _trim_truncated(answer: str) -> str:
    """Cut an answer that hit the token limit back to its last full sentence, if it has one, so
    replay never teaches the model to stop mid-sentence."""
    cut = max(answer.rfind(". "), answer.rfind(".\n"), answer.rfind("! "), answer.rfind("? "))
    return answer[: cut + 1].rstrip() if cut > 0 else answer.rstrip()


def replay_record(prompt: dict[str, str], answer: str) -> dict[str, Any]:
    """A chat record marked as replay."""
    return {
        "messages": [{"role": "user", "content": prompt["prompt"]}, {"role": "assistant", "content": answer}],
        REPLAY_KEY: True,
        "replay_id": prompt["id"],
    }


def self_generated_replay(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    n: int,
    max_new_tokens: int,
    cache_key: str,
    prompts_path: str | Path = PROMPTS_FILE,
    batch_size: int = 16,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """The base model's own greedy answers to the first ``n`` replay prompts, as chat records.

    ``cache_key`` identifies the base model (pass :func:`forgetless.models.weights_fingerprint`);
    the cache file is also keyed by the prompt file's hash, the tokenizer's chat template and
    ``max_new_tokens``. Prompts whose answer comes out empty are skipped, so fewer than ``n``
    records can come back.
    """
    from ..evaluate.scoring import chat_prompt_ids, generate_greedy

    prompts = load_prompts(prompts_path)[: max(0, n)]
    if not prompts:
        return []
    plain = prompt_format(tokenizer) == PLAIN
    key = sha256_json(
        {"model": cache_key, "prompts": sha256_file(prompts_path), "template": tokenizer.chat_template, "max_new_tokens": max_new_tokens,
         **({"format": "plain-v1"} if plain else {})}
    )[:32]  # fmt: skip
    cache_file = cache_dir(REPLAY_CACHE_DIR) / f"{key}.jsonl"
    cached: dict[str, str] = {}
    if cache_file.exists():
        # A crash while appending can leave a partial last line: skip it rather than fail.
        for raw in cache_file.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(raw)
                cached[rec["id"]] = rec["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    missing = [p for p in prompts if p["id"] not in cached]
    if missing:
        ids = [chat_prompt_ids(tokenizer, p["prompt"]) for p in missing]
        with Progress(console=console, disable=console is None, transient=True) as progress:
            task = progress.add_task("self-generated replay", total=len(missing))
            for s in range(0, len(missing), batch_size):
                chunk = missing[s : s + batch_size]
                outs = generate_greedy(model, tokenizer, ids[s : s + batch_size], max_new_tokens=max_new_tokens, batch_size=batch_size)
                for p, out in zip(chunk, outs):
                    full = tokenizer.decode(out, skip_special_tokens=True)
                    # A base model's answer ends where the plain frame's next turn would start.
                    text = cut_at_stop(full) if plain else full
                    ended = tokenizer.eos_token_id in out or len(text) < len(full)
                    text = text.strip()
                    if not ended:
                        text = _trim_truncated(text)
                    cached[p["id"]] = text
                    append_jsonl(cache_file, {"id": p["id"], "answer": text})
                progress.advance(task, len(chunk))
    return [replay_record(p, cached[p["id"]]) for p in prompts if cached[p["id"]].strip()]


def count_replay_file(path: Path) -> int:
    """Validate a user replay file (every record, naming file/line/field on error); return its size."""
    return sum(1 for _ in iter_replay_file(path))


def iter_replay_file(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a user replay file (text, messages or prompt/response), each marked as replay."""
    for line, rec in iter_jsonl(path):
        record_to_example(rec, file=path, line=line)
        yield {**rec, REPLAY_KEY: True, "replay_id": f"{Path(path).name}:{line}"}


def interleave_positions(n_kept: int, n_replay: int) -> list[int]:
    """For each replay record, the number of kept records written before it: spread evenly, so any
    slice of the mixed file has about the configured ratio."""
    if n_replay <= 0:
        return []
    return [((k + 1) * n_kept) // (n_replay + 1) for k in range(n_replay)]


def replay_count(n_kept: int, ratio: float) -> int:
    """Replay records needed so they are ``ratio`` of the mixed output: r / (1 - r) x kept."""
    if ratio <= 0 or n_kept <= 0:
        return 0
    return round(ratio / (1 - ratio) * n_kept)
