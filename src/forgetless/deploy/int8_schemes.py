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
# What `quantize` gates, `load_variant(..., "int8")` builds and `bench` times: int8 weights on bf16
# activations. On the demo's trained run it passed the gate (KL +0.0054, domain scores unchanged;
# docs/benchmarks.md) and its matmuls ran 3-6x faster than fp32 on an AMX CPU; `weight-only` (fp32
# activations, KL +0.004 on a 16-prompt probe) is for CPUs without fast bf16, where it is the
# closer of the two. The dynamic schemes fail the gate by ~70x on this model.
DEFAULT_INT8_SCHEME = "weight-only-bf16"
BENCH_INT8_SCHEME = DEFAULT_INT8_SCHEME
