"""forgetless: fine-tune an LLM on domain documents without catastrophic forgetting, and prove it."""

__version__ = "0.1.0"
