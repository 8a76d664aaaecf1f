"""Stage plans over the federated runtime: DevFT (fused-layer stages) and ProgFed (a growing prefix)."""
