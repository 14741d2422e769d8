"""The int8 schemes and which one each command uses by default (no torch import: the CLI reads these)."""

# How int8 is applied:
#
# * ``weight-only``         int8 weights, one scale per output row, fp32 activations, every Linear
#                           (torch backend: forgetless.deploy.int8_weight_only);
# * ``weight-only-bf16``    the same int8 weights, bf16 activations: the same kernel runs 3-6x
#                           faster than an fp32 matmul on them instead of ~8x slower;
# * ``per-channel``         dynamic quantization: int8 weights per output row AND int8 activations;
# * ``per-channel-fp32-head``  the same, the LM head kept in fp32;
# * ``per-tensor``          dynamic quantization with one weight scale per matrix.
#
# Embeddings are never quantized (they are a lookup, not a matmul). Measured on the embedded
# SmolLM2-135M (docs/benchmarks.md, bench/deploy_int8_schemes.py): the three dynamic schemes move
# the general KL to base by 0.68-0.87 nats/token; weight-only by 0.004 (16 prompts).
INT8_SCHEMES = ("weight-only", "weight-only-bf16", "per-channel", "per-channel-fp32-head", "per-tensor")
# What `quantize` gates and `load_variant(..., "int8")` builds: the scheme that passes the gate.
DEFAULT_INT8_SCHEME = "weight-only"
# What `bench` times by default: the fast dynamic scheme (1.3-2x fp32's decode speed where
# weight-only is slower than fp32 on CPU); a speed figure, not a servable variant.
BENCH_INT8_SCHEME = "per-channel"
