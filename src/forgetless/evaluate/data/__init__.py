"""Versioned evaluation data (JSONL) and the seeded scripts that generate some of it."""
