"""Weight-only int8 linear layers: int8 weights with one fp32 scale per output row, fp32 activations.

Measured on the embedded SmolLM2-135M (docs/benchmarks.md): torch's dynamic int8 quantization
moves the general KL to base by 0.68-0.87 nats/token whatever the weight scales (per tensor, per
channel, LM head in fp32), while int8 weights alone (activations left in fp32) move it by 0.004.
The error comes from quantizing the activations (one scale per tensor, and this model's
activations have outlier channels), so this scheme keeps them in full precision.

The matmul is ``aten._weight_int8pack_mm`` (a CPU kernel shipped with torch): the int8 weights are
read as they are, never expanded to an fp32 copy. The gain is memory (weights 237 vs 513 MB for
SmolLM2-135M), not speed: measured at 1 thread on fp32 activations it decoded ~5x slower than fp32.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with ``q`` int8 ``[out, in]`` and ``scale`` fp32 ``[out]``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        # Symmetric per-row scale: the largest magnitude of each output row maps to 127.
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).float().contiguous(), self.qweight, self.scale)
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def quantize_weight_only(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (the LM head included) by :class:`Int8WeightOnlyLinear`, in place.

    A tied LM head gets its own int8 copy; the embedding (a lookup) stays fp32.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, Int8WeightOnlyLinear(child))
    return model
