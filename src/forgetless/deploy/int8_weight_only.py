"""Weight-only int8 linear layers: int8 weights with one fp32 scale per output row, fp32 activations.

Measured on the embedded SmolLM2-135M (docs/benchmarks.md): torch's dynamic int8 quantization
moves the general KL to base by 0.68-0.87 nats/token whatever the weight scales (per tensor, per
channel, LM head in fp32), while int8 weights alone (activations left in fp32) move it by 0.004.
The error comes from quantizing the activations (one scale per tensor, and this model's
activations have outlier channels), so this scheme keeps them in full precision.

The matmul is ``aten._weight_int8pack_mm`` (a CPU kernel shipped with torch): the int8 weights are
read as they are, never expanded to an fp32 copy. Its speed depends on the activations' dtype:
on fp32 activations it runs ~8x slower than an fp32 matmul (one decode row, 1 thread, AMX CPU),
on bf16 activations 3-6x faster (bench/deploy_int8_matmul.py), so ``act_dtype`` picks: fp32
(scheme ``weight-only``, the closest to fp32) or bf16 (``weight-only-bf16``, the fast one). Either
way the layer returns the input's dtype.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with ``q`` int8 ``[out, in]`` and ``scale`` ``[out]``;
    the matmul runs on activations cast to ``act_dtype``."""

    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        # Symmetric per-row scale: the largest magnitude of each output row maps to 127.
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.register_buffer("qweight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        # torch's bf16 path of this kernel crashes or returns garbage when the input width is not a
        # multiple of 16 (seen at widths 2-12, 20, 24, 36, 40, 100, 104; 8 wrong on 3 rows; every
        # multiple of 32 tried was right): such a layer keeps fp32 activations. Model widths are
        # multiples of 64 in practice.
        self.act_dtype = act_dtype if act_dtype == torch.float32 or linear.in_features % 32 == 0 else torch.float32
        # The kernel wants the scales in the activations' dtype.
        self.register_buffer("scale", scale.to(act_dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).to(self.act_dtype).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scale).to(x.dtype)
        y = y.reshape(*shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def quantize_weight_only(model: nn.Module, act_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (the LM head included) by :class:`Int8WeightOnlyLinear`, in place.

    A tied LM head gets its own int8 copy; the embedding (a lookup) stays fp32.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, Int8WeightOnlyLinear(child, act_dtype))
    return model
