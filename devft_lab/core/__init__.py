"""Foundations: models (presets, loading, GGUF cache), layers (architecture adapter), train (the local step), evaluate (scoring), generate, files."""
