"""Each regularizer against hand-computed values on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from forgetless.testing import tiny_model
from forgetless.train.adapters import attach_adapter
from forgetless.train.config import LoraSettings
from forgetless.train.regularizers import Regularizers, estimate_fisher, global_token_mean, kl_base_tuned, lora_delta, lora_l2, lora_layers


def _peft(seed: int = 0) -> torch.nn.Module:
    model = attach_adapter(tiny_model(seed=seed), LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)  # non-zero update
    return model


def test_kl_by_hand() -> None:
    base = torch.zeros(1, 1, 2)  # uniform (0.5, 0.5)
    tuned = torch.tensor([[[math.log(3.0), 0.0]]])  # (0.75, 0.25)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 0.5 ln(4/3)
    assert kl_base_tuned(base, tuned, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(expected, abs=1e-6)
    # Masked positions do not count.
    two = torch.cat([base, base], 1), torch.cat([tuned, base], 1)
    assert kl_base_tuned(*two, torch.tensor([[True, False]])).item() == pytest.approx(expected, abs=1e-6)


def test_lora_l2_is_frobenius_of_the_update() -> None:
    model = _peft()
    direct = sum((lora_delta(layer) ** 2).sum() for _, layer in lora_layers(model))
    assert lora_l2(lora_layers(model)).item() == pytest.approx(float(direct), rel=1e-5)
    # Hand-worked: A = [[1, 2]], B = [[1], [0]], scale 2 -> s*BA = [[2, 4], [0, 0]] -> 4 + 16 = 20.
    layer = lora_layers(model)[0][1]
    r1 = torch.nn.Linear(2, 1, bias=False)
    r1.weight.data = torch.tensor([[1.0, 2.0]])
    r2 = torch.nn.Linear(1, 2, bias=False)
    r2.weight.data = torch.tensor([[1.0], [0.0]])
    layer.lora_A["default"], layer.lora_B["default"], layer.scaling["default"] = r1, r2, 2.0
    assert lora_l2([("x", layer)]).item() == pytest.approx(20.0)


def test_ewc_with_unit_fisher_equals_l2() -> None:
    model = _peft()
    fisher = {name: torch.ones_like(layer.get_base_layer().weight) for name, layer in lora_layers(model)}
    regs = Regularizers(model, ewc=1.0, fisher=fisher)
    assert regs.ewc_term(model).item() == pytest.approx(lora_l2(lora_layers(model)).item(), rel=1e-5)
    # A Fisher of 2 on one layer and 0 elsewhere weighs only that layer, twice.
    (n0, l0), *rest = lora_layers(model)
    fisher = {n0: 2 * torch.ones_like(l0.get_base_layer().weight), **{n: torch.zeros_like(l.get_base_layer().weight) for n, l in rest}}
    regs = Regularizers(model, ewc=1.0, fisher=fisher)
    assert regs.ewc_term(model).item() == pytest.approx(2 * float((lora_delta(l0) ** 2).sum()), rel=1e-5)


def test_fisher_is_normalised_and_leaves_base_frozen() -> None:
    model = _peft()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "position_ids": torch.tensor([[0, 1, 2, 3]]), "labels": torch.tensor([[-100, 6, 7, 8]])}
    fisher = estimate_fisher(model, [batch, batch])
    total = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    assert set(fisher) == {n for n, _ in lora_layers(model)}
    assert not any(layer.get_base_layer().weight.requires_grad for _, layer in lora_layers(model))


def test_kl_term_uses_adapter_disabled_base() -> None:
    model = _peft()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    inputs = {"input_ids": ids, "position_ids": torch.arange(4).repeat(2, 1), "labels": ids.clone()}
    regs = Regularizers(model, kl_to_base=1.0)
    tuned = model(input_ids=ids, use_cache=False).logits
    replay = torch.tensor([False, True])
    with model.disable_adapter():
        base = model(input_ids=ids[1:], use_cache=False).logits
    expected = kl_base_tuned(base[:, :-1], tuned[1:, :-1], torch.ones(1, 3, dtype=torch.bool))
    got = regs.kl_term(model, inputs, tuned, replay)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and got.item() > 0
    assert regs.kl_term(model, inputs, tuned, torch.tensor([False, False])) is None


def test_full_mode_l2sp_against_snapshot() -> None:
    model = attach_adapter(tiny_model(), LoraSettings(mode="full"))
    regs = Regularizers(model, l2sp=1.0)
    assert regs.l2sp_term(model).item() == 0.0
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # 0.5^2 per element
    n = next(model.parameters()).numel()
    assert regs.l2sp_term(model).item() == pytest.approx(0.25 * n, rel=1e-5)


def test_trainer_adds_weighted_terms(tiny_run) -> None:  # noqa: ANN001
    """compute_loss = LM loss + w * term, with the term logged under reg/."""
    from forgetless.config import load_config
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import GeneralReference
    from forgetless.evaluate.runner import Evaluator
    from forgetless.train.build import build_trainer
    from forgetless.testing import tiny_tokenizer
    from forgetless.train.callbacks import MetricsRecorder
    from forgetless.train.dataset import PackedCollator, build_dataset
    from forgetless.data import Example

    cfg = load_config(tiny_run / "cfg.yaml")
    tok = tiny_tokenizer()
    model = _peft()
    ds = build_dataset(tok, [Example(text="zorvanex is a drug made by acme")], max_length=32)
    ref = GeneralReference([], [], [], [], [], [])
    rec = MetricsRecorder(cfg.run_dir / "m.jsonl", cfg.run_dir / "tb")
    regs = Regularizers(model, l2sp=3.0)
    trainer = build_trainer(cfg, model, tok, ds, Evaluator(tok, DomainData(), ref), rec, total_steps=1, every=1, device="cpu", regularizers=regs)
    batch = PackedCollator(0)([ds[0]])
    loss = trainer.compute_loss(model, batch)
    plain = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False).loss
    assert loss.item() == pytest.approx(plain.item() + 3.0 * lora_l2(lora_layers(model)).item(), rel=1e-5)
    assert set(trainer._terms) == {"lm_loss", "l2sp"}


def test_kl_under_ddp_is_a_mean_over_all_ranks_tokens() -> None:
    # Two ranks: rank 0 has 1 replay token with KL 2.0, rank 1 has 3 tokens with KL summing to 2.0.
    # Per-token mean over both: 4.0 / 4 = 1.0. Averaging each rank's own mean would give
    # (2.0 + 0.667) / 2 = 1.333, over-weighting rank 0's single token.
    sums, counts = [torch.tensor(2.0), torch.tensor(2.0)], [torch.tensor(1.0), torch.tensor(3.0)]
    all_sum = lambda t: torch.stack(counts).sum()  # noqa: E731 - what an all-reduce of the counts returns
    terms = [global_token_mean(s, n, 2, all_sum) for s, n in zip(sums, counts)]
    assert [float(t) for t in terms] == [1.0, 1.0]
    assert float(sum(terms) / 2) == pytest.approx(1.0)  # DDP averages the ranks' gradients
    zero = torch.tensor(0.0)
    assert global_token_mean(zero, zero, 2, lambda t: torch.tensor(0.0)) is None  # no replay anywhere


def test_kl_sum_matches_kl_term() -> None:
    model = get_peft_model(tiny_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    regs = Regularizers(model, kl_to_base=1.0)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    inputs = {"input_ids": ids, "position_ids": torch.arange(4).repeat(2, 1), "labels": torch.tensor([[-100, 6, 7, 8], [-100, -100, 11, 12]])}
    tuned = torch.randn(2, 4, tiny_model().config.vocab_size)
    replay = torch.tensor([True, True])
    total, n = regs.kl_sum(model, inputs, tuned, replay)
    assert float(n) == 5.0  # labelled next tokens: 3 in row 0, 2 in row 1
    assert float(total / n) == pytest.approx(float(regs.kl_term(model, inputs, tuned, replay)))
    assert [float(x) for x in regs.kl_sum(model, inputs, tuned, torch.tensor([False, False]))] == [0.0, 0.0]


def test_replay_rows_trained_by_kl_only(tiny_run) -> None:  # noqa: ANN001
    """With kl_to_base > 0 (replay_ce off), replay rows leave the LM loss and feed only the KL term;
    a batch of replay rows alone gives a finite loss whose gradient is the KL's."""
    from forgetless.config import load_config
    from forgetless.data import Example
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import GeneralReference
    from forgetless.evaluate.runner import Evaluator
    from forgetless.testing import tiny_tokenizer
    from forgetless.train.build import build_trainer
    from forgetless.train.callbacks import MetricsRecorder
    from forgetless.train.dataset import build_dataset

    cfg = load_config(tiny_run / "cfg.yaml", ["train.kl_to_base=2.0", "train.replay_ratio=0.5"])
    tok = tiny_tokenizer()
    model = _peft()
    with torch.no_grad():  # a non-zero adapter, so the tuned model differs from its base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ds = build_dataset(
        tok, [Example(text="zorvanex is a drug made by acme")], max_length=32, packing=False,
        replay=[Example(messages=[{"role": "user", "content": "what is the capital of france"}, {"role": "assistant", "content": "paris is the capital"}])], replay_ratio=0.5,
    )  # fmt: skip
    rows = {bool(ds[i]["replay"]): ds[i] for i in range(len(ds))}
    regs = Regularizers(model, kl_to_base=2.0)
    rec = MetricsRecorder(cfg.run_dir / "m.jsonl", cfg.run_dir / "tb")
    trainer = build_trainer(cfg, model, tok, ds, Evaluator(tok, DomainData(), GeneralReference([], [], [], [], [], [])), rec, total_steps=1, every=1, device="cpu", regularizers=regs)
    collate = trainer.data_collator
    assert collate.replay_kl_only
    batch = collate([rows[False], rows[True]])
    assert (batch["labels"][1] == -100).all() and (batch["kl_labels"][0] == -100).all()
    assert (batch["kl_labels"][1] != -100).any() and (batch["labels"][0] != -100).any()
    # Mixed batch: LM loss on the domain row only, plus 2 x KL on the replay row.
    loss = trainer.compute_loss(model, dict(batch))
    ids, pos = batch["input_ids"], batch["position_ids"]
    lm = model(input_ids=ids[:1], position_ids=pos[:1], labels=batch["labels"][:1], use_cache=False).loss
    tuned = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    kl = regs.kl_term(model, {"input_ids": ids, "position_ids": pos, "labels": batch["kl_labels"]}, tuned, batch["replay"])
    assert float(kl) > 1e-4
    assert loss.item() == pytest.approx(lm.item() + 2.0 * kl.item(), rel=1e-4)
    # Replay rows alone: no LM tokens, a finite loss equal to the KL term, and gradients from it.
    only = collate([rows[True]])
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(only))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2.0 * float(trainer._terms["kl_to_base"][-1]), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_trainer_batches_each_hold_replay_rows(tiny_run) -> None:  # noqa: ANN001
    """train.replay_every_batch: with a KL term every training batch holds a replay row; off (the
    default), the Trainer's own shuffle."""
    from forgetless.config import load_config
    from forgetless.data import Example
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import GeneralReference
    from forgetless.evaluate.runner import Evaluator
    from forgetless.testing import tiny_tokenizer
    from forgetless.train.build import build_trainer
    from forgetless.train.callbacks import MetricsRecorder
    from forgetless.train.dataset import ReplaySampler

    cfg = load_config(tiny_run / "cfg.yaml")
    tok = tiny_tokenizer()
    model = _peft()
    # Unpacked, one row per example: 9 domain rows and 3 replay rows, so batches of 4 -> one
    # replay row in each of the 3 batches.
    from forgetless.train.dataset import PackedDataset, unpacked
    from forgetless.data import tokenize_example

    items = [tokenize_example(tok, Example(text=f"zorvanex is a drug made by acme {'a ' * i}")) for i in range(12)]
    for t in items[9:]:
        t.replay = True
    ds = PackedDataset(unpacked(items))
    assert [r.replay for r in ds.rows] == [False] * 9 + [True] * 3
    rec = MetricsRecorder(cfg.run_dir / "m.jsonl", cfg.run_dir / "tb")
    cfg.train.batch_size = 4
    cfg.train.replay_every_batch = True
    ref = GeneralReference([], [], [], [], [], [])
    regs = Regularizers(model, kl_to_base=1.0)
    trainer = build_trainer(cfg, model, tok, ds, Evaluator(tok, DomainData(), ref), rec, total_steps=3, every=3, device="cpu", regularizers=regs)
    assert isinstance(trainer._get_train_sampler(), ReplaySampler)
    assert [int(b["replay"].sum()) for b in trainer.get_train_dataloader()] == [1, 1, 1]
    cfg.train.replay_every_batch = False
    plain = build_trainer(cfg, model, tok, ds, Evaluator(tok, DomainData(), ref), rec, total_steps=3, every=3, device="cpu", regularizers=regs)
    assert not isinstance(plain._get_train_sampler(), ReplaySampler)



def test_trainer_rotates_through_the_replay_pool(tiny_run) -> None:  # noqa: ANN001
    """train.replay_rotate: the Trainer's epochs take the next replay rows of the pool each, and an
    epoch has as many steps as its own rows make, not as the whole pool would."""
    from forgetless.config import load_config
    from forgetless.data import Example
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import GeneralReference
    from forgetless.evaluate.runner import Evaluator
    from forgetless.testing import tiny_tokenizer
    from forgetless.train.build import build_trainer
    from forgetless.train.callbacks import MetricsRecorder
    from forgetless.train.dataset import ReplaySampler, build_dataset

    cfg = load_config(tiny_run / "cfg.yaml")
    tok = tiny_tokenizer()
    model = _peft()
    # 6 domain rows of 5 tokens; replay 0.25 -> 10 tokens an epoch: 4 of the 12 three-token
    # replay rows, so the pool lasts 3 epochs.
    ds = build_dataset(tok, [Example(text="zorvanex is a drug")] * 6, max_length=16, packing=False,
                       replay=[Example(text=f"a {w}") for w in "drug acme zorvanex made by is what a drug acme made by".split()], replay_ratio=0.25, replay_rotate=True)  # fmt: skip
    assert (ds.epoch_rows, ds.replay_per_epoch, ds.replay_pool_rows) == (10, 4, 12)
    cfg.train.batch_size = 2
    ref = GeneralReference([], [], [], [], [], [])
    rec = MetricsRecorder(cfg.run_dir / "m.jsonl", cfg.run_dir / "tb")
    trainer = build_trainer(cfg, model, tok, ds, Evaluator(tok, DomainData(), ref), rec, total_steps=15, every=15, device="cpu", regularizers=Regularizers(model, kl_to_base=1.0))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, ReplaySampler) and sampler.per_epoch == 4 and not sampler.spread
    dl = trainer.get_train_dataloader()
    assert len(dl) == 5  # 10 rows an epoch at batch 2
    seen = []
    for epoch in range(3):
        dl.set_epoch(epoch)
        batches = list(dl)
        assert len(batches) == 5 and sum(int(b["replay"].sum()) for b in batches) == 4
        seen += [tuple(row[:3].tolist()) for b in batches for row, r in zip(b["input_ids"], b["replay"]) if r]
    assert len(set(seen)) >= 6  # 12 rows over 3 epochs: not the same 4 every epoch

def _docs_and_replay(docs: list[str]):  # noqa: ANN202
    """A tiny tokenizer and an unpacked dataset: ``docs`` as domain rows, one replay row (half)."""
    from forgetless.data import Example
    from forgetless.testing import tiny_tokenizer
    from forgetless.train.dataset import build_dataset

    tok = tiny_tokenizer()
    replay = [Example(messages=[{"role": "user", "content": "what is the capital of france"}, {"role": "assistant", "content": "paris is the capital"}])]
    return tok, build_dataset(tok, [Example(text=d) for d in docs], max_length=32, packing=False, replay=replay, replay_ratio=0.5)


def _trainer(tiny_run, overrides: list[str], model: torch.nn.Module, tok, ds, regs: Regularizers | None, tag: str):  # noqa: ANN001, ANN202
    """``build_trainer`` on the tiny run's config with ``overrides``, no evaluation suites."""
    from forgetless.config import load_config
    from forgetless.evaluate.domain import DomainData
    from forgetless.evaluate.drift import GeneralReference
    from forgetless.evaluate.runner import Evaluator
    from forgetless.train.build import build_trainer
    from forgetless.train.callbacks import MetricsRecorder

    cfg = load_config(tiny_run / "cfg.yaml", overrides)
    rec = MetricsRecorder(cfg.run_dir / f"m{tag}.jsonl", cfg.run_dir / f"tb{tag}")
    evaluator = Evaluator(tok, DomainData(), GeneralReference([], [], [], [], [], []))
    return build_trainer(cfg, model, tok, ds, evaluator, rec, total_steps=1, every=1, device="cpu", regularizers=regs)


@pytest.mark.parametrize("with_kl", [True, False])
def test_head_chunked_loss_equals_whole_logits(tiny_run, with_kl: bool) -> None:  # noqa: ANN001
    """train.head_chunk > 0 (LM loss and KL from hidden states, a few positions at a time) gives the
    loss and the adapter gradients of whole logits, with and without the KL term."""
    from forgetless.train.dataset import PackedCollator

    tok, ds = _docs_and_replay(["zorvanex is a drug made by acme", "acme made a drug"])
    batch = PackedCollator(0, replay_kl_only=True)([ds[i] for i in range(len(ds))])
    assert bool(batch["replay"].any()) and not bool(batch["replay"].all())
    results = []
    for chunk in (0, 3):
        model = _peft()
        regs = Regularizers(model, kl_to_base=2.0) if with_kl else None
        trainer = _trainer(tiny_run, [f"train.head_chunk={chunk}"], model, tok, ds, regs, tag=str(chunk))
        assert trainer.head_chunk == chunk
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = [p.grad.clone() for n, p in model.named_parameters() if p.requires_grad]
        results.append((loss.item(), grads, dict(trainer._terms)))
    (l0, g0, t0), (l3, g3, t3) = results
    assert l3 == pytest.approx(l0, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g3))
    assert set(t3) == set(t0) == ({"lm_loss", "kl_to_base"} if with_kl else set())
    if with_kl:  # the KL is ~7e-4 here: compared to float32 summation-order noise
        assert t3["kl_to_base"][0] == pytest.approx(t0["kl_to_base"][0], abs=1e-7) and t0["kl_to_base"][0] > 1e-4


def test_head_chunked_replay_only_step_trains_on_the_kl_alone(tiny_run) -> None:  # noqa: ANN001
    """A step whose rows are all replay has no language-model token in the whole accumulated batch
    (the Trainer passes num_items_in_batch 0): the chunked loss is then the KL term alone, finite,
    with the gradients of whole logits, not 0 / 0."""
    from forgetless.train.dataset import PackedCollator

    tok, ds = _docs_and_replay(["zorvanex is a drug made by acme"])
    replay_rows = [ds[i] for i in range(len(ds)) if ds[i]["replay"]]
    batch = PackedCollator(0, replay_kl_only=True)(replay_rows)
    assert bool(batch["replay"].all()) and not bool((batch["labels"][:, 1:] != -100).any())
    results = []
    for chunk in (0, 3):
        model = _peft()
        with torch.no_grad():  # an adapter away from zero, so the KL to the base is not 0
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        trainer = _trainer(tiny_run, [f"train.head_chunk={chunk}"], model, tok, ds, Regularizers(model, kl_to_base=2.0), tag=f"r{chunk}")
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(0))
        loss.backward()
        grads = [p.grad.clone() for n, p in model.named_parameters() if p.requires_grad]
        results.append((loss.item(), grads))
    (l0, g0), (l3, g3) = results
    assert math.isfinite(l3) and l3 > 1e-4
    assert l3 == pytest.approx(l0, rel=1e-5)
    assert all(torch.isfinite(g).all() for g in g3) and any(bool(g.abs().sum() > 0) for g in g3)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g3))


def test_head_chunk_auto_chunks_any_model_with_a_separate_head() -> None:
    """train.head_chunk -1 (the default) chunks whenever the trunk and LM head can be split (through
    PEFT too), keeps whole logits for a model laid out otherwise, and an explicit value wins."""
    from forgetless.testing import tiny_gemma3, tiny_model
    from forgetless.train.build import HEAD_CHUNK_AUTO, head_chunk

    assert HEAD_CHUNK_AUTO == 256
    assert head_chunk(-1, tiny_model()) == 256
    assert head_chunk(-1, tiny_gemma3(64)) == 256
    assert head_chunk(-1, _peft()) == 256
    assert head_chunk(0, tiny_model()) == 0 and head_chunk(7, tiny_model()) == 7

    class Fused(torch.nn.Module):  # logits straight from one module: nothing to split
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 4)

    assert head_chunk(-1, Fused()) == 0


def test_gradient_checkpointing_is_on_by_default_and_changes_no_gradient(tiny_run) -> None:  # noqa: ANN001
    """The Trainer gets non-reentrant gradient checkpointing by default; under it the loss (LM on
    domain rows, chunked head, KL to the base on the replay row) and every adapter gradient equal
    the run without it."""
    from forgetless.train.dataset import PackedCollator

    tok, ds = _docs_and_replay(["zorvanex is a drug made by acme", "acme made a drug"])
    batch = PackedCollator(0, replay_kl_only=True)([ds[i] for i in range(len(ds))])
    results = []
    for ckpt in (False, True):
        model = _peft()
        trainer = _trainer(tiny_run, [] if ckpt else ["train.gradient_checkpointing=false"], model, tok, ds, Regularizers(model, kl_to_base=2.0), tag=f"g{ckpt}")
        assert trainer.args.gradient_checkpointing is ckpt
        if ckpt:
            assert trainer.args.gradient_checkpointing_kwargs == {"use_reentrant": False}
            # what Trainer.train() does with the arguments before the first step
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.x's name
            if enable is not None:
                enable(activation_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
            assert model.base_model.model.model.gradient_checkpointing
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad], dict(trainer._terms)))
    (l0, g0, t0), (l1, g1, t1) = results
    assert l1 == pytest.approx(l0, rel=1e-6) and t1["kl_to_base"][0] == pytest.approx(t0["kl_to_base"][0], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(g0, g1)) and any(bool(g.ne(0).any()) for g in g1)
