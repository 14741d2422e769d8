"""Turn examples into training sequences: chat templates, prompt masking, chunking and packing.

Packing concatenates several examples into one row instead of padding each to the longest. Each
example keeps its own attention span: ``position_ids`` restart at 0 for every example, and
transformers builds a block-diagonal causal mask from them, so no token attends across examples.
The first token of each packed example gets label -100 so no loss crosses a boundary either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..data import IGNORE, Example, Tokenized, tokenize_example
from ..errors import InputError


def chunk(t: Tokenized, max_length: int) -> list[Tokenized]:
    """Split an over-long example into consecutive windows of at most ``max_length`` (nothing is dropped)."""
    if len(t.input_ids) <= max_length:
        return [t]
    return [
        Tokenized(t.input_ids[s : s + max_length], t.labels[s : s + max_length], t.replay)
        for s in range(0, len(t.input_ids), max_length)
    ]


@dataclass
class Packed:
    """One training row: several examples back to back, with restarting position ids."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    replay: bool


def pack(items: list[Tokenized], max_length: int) -> list[Packed]:
    """First-fit-decreasing packing into rows of at most ``max_length`` tokens.

    Domain and replay examples are packed into separate rows, so a row is either all replay (and
    gets the KL-to-base loss) or all domain. Deterministic for a given input order.
    """
    rows: list[Packed] = []
    for replay in (False, True):
        # Examples with no label left (e.g. a chunk that is all prompt) teach nothing: skip them.
        group = [t for t in items if t.replay == replay and any(l != IGNORE for l in t.labels[1:])]
        group.sort(key=lambda t: -len(t.input_ids))
        open_rows: list[Packed] = []
        for t in group:
            for row in open_rows:
                if len(row.input_ids) + len(t.input_ids) <= max_length:
                    break
            else:
                row = Packed([], [], [], replay)
                open_rows.append(row)
            row.input_ids += t.input_ids
            # First token of each example: never predicted from the previous example's last token.
            row.labels += [IGNORE] + t.labels[1:]
            row.position_ids += list(range(len(t.input_ids)))
        rows.extend(open_rows)
    return rows


def unpacked(items: list[Tokenized]) -> list[Packed]:
    """One example per row (packing off); rows are padded per batch by the collator."""
    return [Packed(t.input_ids, [IGNORE] + t.labels[1:], list(range(len(t.input_ids))), t.replay) for t in items if any(l != IGNORE for l in t.labels[1:])]


class PackedDataset(torch.utils.data.Dataset):
    """A list of :class:`Packed` rows served as dicts of lists."""

    def __init__(self, rows: list[Packed]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, object]:
        r = self.rows[i]
        return {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids, "replay": r.replay}

    @property
    def num_tokens(self) -> int:
        """Total tokens across rows (what one epoch processes)."""
        return sum(len(r.input_ids) for r in self.rows)


@dataclass
class PackedCollator:
    """Right-pads rows to the batch's longest row.

    Padding is its own segment (positions restart at 0, labels -100), so it never attends to or
    is attended by real tokens; no attention_mask is passed, which lets transformers infer the
    block-diagonal mask from the position ids.

    ``replay_kl_only``: replay rows' labels move to ``kl_labels`` (-100 elsewhere) and leave
    ``labels``, so the language-model loss (and its token count) covers domain rows only and the
    KL-to-base term alone trains replay rows (see ``train.replay_ce``).
    """

    pad_id: int
    replay_kl_only: bool = False

    def __call__(self, batch: list[dict[str, object]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)  # type: ignore[arg-type]
        ids, labels, pos = [], [], []
        for b in batch:
            n = len(b["input_ids"])  # type: ignore[arg-type]
            pad = width - n
            ids.append(list(b["input_ids"]) + [self.pad_id] * pad)  # type: ignore[arg-type]
            labels.append(list(b["labels"]) + [IGNORE] * pad)  # type: ignore[arg-type]
            pos.append(list(b["position_ids"]) + list(range(pad)))  # type: ignore[arg-type]
        replay = torch.tensor([bool(b["replay"]) for b in batch])
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos), "replay": replay}
        if self.replay_kl_only:
            out["kl_labels"] = torch.where(replay[:, None], out["labels"], IGNORE)
            out["labels"] = torch.where(replay[:, None], IGNORE, out["labels"])
        return out


def draw_replay(domain_size: int, replay_sizes: list[int], ratio: float, *, seed: int = 0) -> list[int]:
    """Indices into the replay pool whose sizes make up ``ratio`` of domain + replay.

    Drawn in a seeded shuffled order, cycling if the pool is smaller than the target, so the
    ratio holds whatever the pool size. Sizes are tokens (or rows, when every size is 1).
    """
    if ratio <= 0 or not replay_sizes:
        return []
    import random

    target = ratio / (1 - ratio) * domain_size
    order = list(range(len(replay_sizes)))
    rng = random.Random(seed)
    chosen: list[int] = []
    have = 0
    while have < target:
        rng.shuffle(order)
        for i in order:
            if have >= target:
                break
            chosen.append(i)
            have += replay_sizes[i]
    return chosen


def mix_replay(domain: list[Tokenized], replay: list[Tokenized], ratio: float, *, seed: int = 0) -> list[Tokenized]:
    """Domain items plus replay items making up ``ratio`` of all tokens (see :func:`draw_replay`)."""
    idx = draw_replay(sum(len(t.input_ids) for t in domain), [len(t.input_ids) for t in replay], ratio, seed=seed)
    return list(domain) + [replay[i] for i in idx]


def build_dataset(
    tok: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    max_length: int,
    packing: bool = True,
    system_prompt: str | None = None,
    replay: list[Example] | None = None,
    replay_ratio: float = 0.0,
    seed: int = 0,
) -> PackedDataset:
    """Tokenize, chunk and (optionally) pack examples into a training dataset, with replay mixed in."""
    def tokenized(exs: list[Example], as_replay: bool) -> list[Tokenized]:
        out: list[Tokenized] = []
        for ex in exs:
            t = tokenize_example(tok, ex, system_prompt=system_prompt)
            t.replay = t.replay or as_replay
            out.extend(chunk(t, max_length))
        return out

    items = mix_replay(tokenized(examples, False), tokenized(replay or [], True), replay_ratio, seed=seed)
    rows = pack(items, max_length) if packing else unpacked(items)
    if not rows:
        raise InputError("no trainable tokens in the training data (every example is empty or fully masked)")
    return PackedDataset(rows)


class ReplaySpreadSampler(torch.utils.data.Sampler[int]):
    """An epoch order in which every batch holds its share of the replay rows.

    A plain shuffle leaves some batches without a replay row (30% replay at batch 4: one step in
    four), and on such a step the KL-to-base term is absent while Adam moves the adapter at full
    LR on domain rows alone, whatever the KL weight. Here each consecutive block of
    ``batch_size`` indices holds its size's share of the replay rows, rounded down or up (so
    every batch has one whenever replay is at least 1 / batch_size of the rows), both groups
    shuffled within themselves, with the batches' order shuffled too.

    Deterministic in ``(seed, epoch)``: a resumed run skips into the same order. Under DDP the
    data loader hands whole batches of this order to each rank, so each rank's batches are spread too.
    """

    def __init__(self, replay: list[bool], batch_size: int, *, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.replay = [bool(r) for r in replay]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The Trainer calls this at the start of every epoch: a new order per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.replay)

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rep = [i for i, r in enumerate(self.replay) if r]
        dom = [i for i, r in enumerate(self.replay) if not r]
        rep = [rep[int(j)] for j in torch.randperm(len(rep), generator=g)]
        dom = [dom[int(j)] for j in torch.randperm(len(dom), generator=g)]
        n, b = len(self.replay), self.batch_size
        nb = -(-n // b)
        batches: list[list[int]] = []
        ri = di = 0
        for k in range(nb):
            lo, hi = k * b, min(n, (k + 1) * b)
            # The replay rows among the first m positions are floor(m * R / n): each batch gets
            # its size's share, rounded down or up, and the shares add up to R exactly.
            want = hi * len(rep) // n - lo * len(rep) // n
            batches.append(rep[ri : ri + want] + dom[di : di + (hi - lo - want)])
            ri += want
            di += hi - lo - want
        # The last batch may be short: it stays last, so every other batch is full.
        head, last = batches[:-1], batches[-1:]
        order = [head[int(j)] for j in torch.randperm(len(head), generator=g)] + last
        for batch in order:
            yield from batch
