"""Seeded client sampling: which clients train in round t.

The sample is a pure function of ``(seed, round)``: resuming a run at round t draws the
same clients without storing any sampler state, and the draw does not depend on what other
code did with the global random generators.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

_STREAM = 0x5A3B1E  # separates this stream from other uses of the same seed


def num_sampled(num_clients: int, clients_per_round: int | float) -> int:
    """Clients per round: an int is a count; a float in (0, 1] a fraction (rounded half up, >= 1)."""
    if num_clients < 1:
        raise ValueError(f"num_clients = {num_clients} must be >= 1")
    if isinstance(clients_per_round, bool):
        raise ValueError("clients_per_round must be an int count or a float fraction, not a bool")
    if isinstance(clients_per_round, float):
        if not 0 < clients_per_round <= 1:
            raise ValueError(f"clients_per_round = {clients_per_round}: a fraction must be in (0, 1]")
        return max(1, min(num_clients, int(math.floor(clients_per_round * num_clients + 0.5))))
    k = int(clients_per_round)
    if not 1 <= k <= num_clients:
        raise ValueError(f"clients_per_round = {k} must be between 1 and num_clients = {num_clients}")
    return k


def round_rng(seed: int, round_idx: int) -> np.random.Generator:
    """The generator of round ``round_idx`` (independent streams per round)."""
    if round_idx < 0:
        raise ValueError(f"round index {round_idx} must be >= 0")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round_idx), _STREAM])


def sample_clients(num_clients: int, clients_per_round: int | float, round_idx: int, seed: int,
                   available: Sequence[int] | None = None) -> list[int]:
    """Sorted client ids sampled without replacement for round ``round_idx``.

    ``available`` restricts the draw to a subset (e.g. clients with enough data); the count
    is then taken from ``len(available)``.
    """
    pool = list(range(num_clients)) if available is None else sorted(int(c) for c in available)
    if available is not None and any(not 0 <= c < num_clients for c in pool):
        raise ValueError(f"available clients must be in [0, {num_clients})")
    k = num_sampled(len(pool), clients_per_round if not isinstance(clients_per_round, int)
                    else min(clients_per_round, len(pool)))
    idx = round_rng(seed, round_idx).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in idx)


def sampling_schedule(num_clients: int, clients_per_round: int | float, num_rounds: int,
                      seed: int, start: int = 0) -> list[list[int]]:
    """The samples of rounds ``start .. start+num_rounds-1`` (for plots and notebooks)."""
    return [sample_clients(num_clients, clients_per_round, t, seed) for t in range(start, start + num_rounds)]
