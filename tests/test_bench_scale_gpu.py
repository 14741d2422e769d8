"""bench/scale_gpu.py runs end to end on the CPU with --tiny (its GPU shapes are not run here)."""

from __future__ import annotations

import math


def test_scale_gpu_tiny_runs_every_family_and_mode(load_bench, capsys) -> None:
    bench = load_bench("scale_gpu")
    rows = bench.main(["--tiny"])
    assert [(r["family"], r["mode"]) for r in rows] == [(f, m) for f in ("llama", "qwen", "gemma") for m in ("hf", "forgetless")]
    for r in rows:
        assert "error" not in r and r["tokens_per_s"] > 0 and r["params"] > 0
        assert math.isnan(r["train_peak_gb"])  # no GPU: no GPU memory to report
    assert all(r["eval_s"] > 0 for r in rows if r["mode"] == "forgetless")
    assert "| gemma | 0.5b |" in capsys.readouterr().out


def test_scale_gpu_shapes_are_the_named_sizes(load_bench) -> None:
    """The configs give about the parameter counts their size classes name (counted, not built)."""
    bench = load_bench("scale_gpu")
    for family, sizes in bench.SHAPES.items():
        for size in sizes:
            c = bench.make_config(family, size, tiny=False)
            h, n, v = c.hidden_size, c.num_hidden_layers, c.vocab_size
            hd = getattr(c, "head_dim", None) or h // c.num_attention_heads
            attn = h * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
            params = n * (attn + 3 * h * c.intermediate_size) + v * h * (1 if c.tie_word_embeddings else 2)
            want = {"0.5b": 0.5e9, "1.5b": 1.5e9, "8b": 8e9}[size]
            assert 0.5 * want < params < 1.6 * want, (family, size, params)
