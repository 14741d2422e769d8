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
    """A list of :class:`Packed` rows served as dicts of lists.

    ``replay_per_epoch``: when set, the replay rows are a pool that the epochs rotate through,
    that many rows an epoch (:class:`ReplaySampler`); None: every row is trained every epoch.
    """

    def __init__(self, rows: list[Packed], *, replay_per_epoch: int | None = None) -> None:
        self.rows = rows
        self.replay_per_epoch = replay_per_epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, object]:
        r = self.rows[i]
        return {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids, "replay": r.replay}

    @property
    def replay_pool_rows(self) -> int:
        """Replay rows held (the pool the epochs rotate through, or the one draw every epoch trains)."""
        return sum(r.replay for r in self.rows)

    @property
    def replay_rows(self) -> int:
        """Replay rows one epoch trains on."""
        return self.replay_pool_rows if self.replay_per_epoch is None else self.replay_per_epoch

    @property
    def epoch_rows(self) -> int:
        """Rows one epoch trains on (all of them, unless the replay rows rotate)."""
        return sum(not r.replay for r in self.rows) + self.replay_rows

    @property
    def num_tokens(self) -> int:
        """Tokens one epoch processes (with rotating replay rows: their mean row length times their count)."""
        dom = sum(len(r.input_ids) for r in self.rows if not r.replay)
        rep = [len(r.input_ids) for r in self.rows if r.replay]
        return dom + (round(sum(rep) / len(rep) * self.replay_rows) if rep else 0)


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


def tokenize_all(tok: PreTrainedTokenizerBase, examples: list[Example], *, max_length: int, system_prompt: str | None = None, as_replay: bool = False) -> list[Tokenized]:
    """Each example tokenized and cut into windows of at most ``max_length``; ``as_replay`` marks
    them all as replay (an example may also be replay by its own flag)."""
    out: list[Tokenized] = []
    for ex in examples:
        t = tokenize_example(tok, ex, system_prompt=system_prompt)
        t.replay = t.replay or as_replay
        out.extend(chunk(t, max_length))
    return out


def build_dataset(
    tok: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    max_length: int,
    packing: bool = True,
    system_prompt: str | None = None,
    replay: list[Example] | None = None,
    replay_ratio: float = 0.0,
    replay_rotate: bool = False,
    seed: int = 0,
) -> PackedDataset:
    """Tokenize, chunk and (optionally) pack examples into a training dataset, with replay mixed in.

    ``replay_rotate``: keep the whole replay pool as rows and let the epochs rotate through it
    (:class:`ReplaySampler`), each epoch training the share of replay rows ``replay_ratio`` asks
    for. Without it one draw from the pool is trained every epoch, and the KL term fits those
    rows rather than the base's behaviour at large.
    """
    to_rows = (lambda items: pack(items, max_length)) if packing else unpacked
    pool = tokenize_all(tok, replay or [], max_length=max_length, system_prompt=system_prompt, as_replay=True)
    domain = tokenize_all(tok, examples, max_length=max_length, system_prompt=system_prompt)
    rows = to_rows(mix_replay(domain, pool, replay_ratio, seed=seed))
    if not rows:
        raise InputError("no trainable tokens in the training data (every example is empty or fully masked)")
    per_epoch = sum(r.replay for r in rows)
    if replay_rotate and per_epoch:
        pool_rows = to_rows(pool)
        if len(pool_rows) > per_epoch:  # a pool no bigger than one epoch's draw has nothing to rotate
            return PackedDataset([r for r in rows if not r.replay] + pool_rows, replay_per_epoch=per_epoch)
    return PackedDataset(rows)


class ReplaySampler(torch.utils.data.Sampler[int]):
    """An epoch order over the domain rows and this epoch's replay rows.

    ``replay_per_epoch`` (a :class:`PackedDataset` whose replay rows rotate): each epoch takes
    the next that many replay rows of one seeded cycle through the pool, so every pool row is
    trained once before any is trained twice; None takes every replay row every epoch.

    ``spread``: each consecutive block of ``batch_size`` indices holds its size's share of the
    replay rows, rounded down or up (so every batch has one whenever replay is at least 1 /
    batch_size of the rows), both groups shuffled within themselves, with the batches' order
    shuffled too. A plain shuffle leaves some batches without a replay row (30% replay at batch
    4: one step in four), and on such a step the KL-to-base term is absent while Adam moves the
    adapter at full LR on domain rows alone, whatever the KL weight. Without ``spread``, one
    shuffle of all the epoch's rows.

    Deterministic in ``(seed, epoch)``: a resumed run skips into the same order. Under DDP the
    data loader hands whole batches of this order to each rank, so each rank's batches are spread too.
    """

    def __init__(self, replay: list[bool], batch_size: int, *, seed: int = 0, spread: bool = True, replay_per_epoch: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_rep = sum(bool(r) for r in replay)
        if replay_per_epoch is not None and not 0 < replay_per_epoch <= n_rep:
            raise ValueError(f"replay_per_epoch must be in [1, {n_rep}] (the replay rows), got {replay_per_epoch}")
        self.replay = [bool(r) for r in replay]
        self.batch_size = batch_size
        self.seed = seed
        self.spread = spread
        self.per_epoch = replay_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The Trainer calls this at the start of every epoch: a new order per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.replay) if self.per_epoch is None else self.replay.count(False) + self.per_epoch

    def epoch_replay(self) -> list[int]:
        """This epoch's replay rows (indices), in the pool's cycle order."""
        rep = [i for i, r in enumerate(self.replay) if r]
        if self.per_epoch is None:
            return rep
        # The cycle is seeded by the seed alone, so consecutive epochs take consecutive slices.
        g = torch.Generator().manual_seed(self.seed * 100_003 + 99_991)
        cycle = [rep[int(j)] for j in torch.randperm(len(rep), generator=g)]
        start = self.epoch * self.per_epoch
        return [cycle[(start + j) % len(cycle)] for j in range(self.per_epoch)]

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rep = self.epoch_replay()
        dom = [i for i, r in enumerate(self.replay) if not r]
        if not self.spread:
            rows = dom + rep
            yield from (rows[int(j)] for j in torch.randperm(len(rows), generator=g))
            return
        rep = [rep[int(j)] for j in torch.randperm(len(rep), generator=g)]
        dom = [dom[int(j)] for j in torch.randperm(len(dom), generator=g)]
        n, b = len(rep) + len(dom), self.batch_size
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
