"""Deploy: serving benchmarks, int8 quantization with a quality gate, 4-bit loading, and the HTML run report."""
