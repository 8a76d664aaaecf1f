"""Experiment drivers that write results/: the paper's tables (reproduce), the runtime benchmark (bench), the centralised lab signal, the submodel report."""
