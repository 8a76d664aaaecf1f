"""A run from a config: config dataclasses and YAML (configs/), run folders and resume, reports, TensorBoard export, the demo."""
