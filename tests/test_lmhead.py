"""The LM head applied in chunks: the same sums and gradients as whole logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forgetless.lmhead import chunked_ce_sum, chunked_kl_sum, final_hidden, lm_split
from forgetless.testing import tiny_gemma3, tiny_model
from forgetless.train.regularizers import kl_base_tuned_sum


@pytest.mark.parametrize("make", [lambda: tiny_model(), lambda: tiny_gemma3(64)])
def test_final_hidden_through_the_head_is_the_models_logits(make) -> None:  # noqa: ANN001
    model = make().eval()
    ids = torch.randint(0, 40, (2, 7))
    _, project = lm_split(model)
    assert torch.allclose(project(final_hidden(model, {"input_ids": ids})), model(input_ids=ids).logits, atol=1e-5)


def test_chunked_sums_and_gradients_match_whole_logits() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(11, 8, requires_grad=True)  # 11 positions: chunks of 4, 4 and 3
    targets = torch.randint(0, 50, (11,))
    base = torch.randn(11, 8)
    ce = chunked_ce_sum(head, hidden, targets, chunk=4)
    whole = F.cross_entropy(head(hidden), targets, reduction="sum")
    assert ce.item() == pytest.approx(whole.item(), rel=1e-6)
    (g_chunk,) = torch.autograd.grad(ce, hidden)
    (g_whole,) = torch.autograd.grad(whole, hidden)
    assert torch.allclose(g_chunk, g_whole, atol=1e-6)

    kl = chunked_kl_sum(head, head, base, hidden, chunk=4)
    ref, n = kl_base_tuned_sum(head(base)[None], head(hidden)[None], torch.ones(1, 11, dtype=torch.bool))
    assert (kl.item(), n.item()) == (pytest.approx(ref.item(), rel=1e-5), 11)
    (g_chunk,) = torch.autograd.grad(kl, hidden)
    (g_whole,) = torch.autograd.grad(ref, hidden)
    assert torch.allclose(g_chunk, g_whole, atol=1e-6)
    # Same hidden states on both sides: KL 0.
    assert chunked_kl_sum(head, head, base, base, chunk=4).item() == pytest.approx(0.0, abs=1e-6)
