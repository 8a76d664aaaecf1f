"""First-fit-decreasing packing of sequences into rows: training micro-batches
(:func:`devft_lab.core.train.pack`) and evaluation passes (:mod:`devft_lab.core.evaluate`)."""
from __future__ import annotations

from typing import Sequence


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` packed into rows, longest first, each into the first row with room.

    A row holds ``capacity`` tokens; a longer sequence gets a row of its own. Ties keep index
    order, so the packing is deterministic.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if r is None:
            rows.append([i])
            room.append(max(capacity - lengths[i], 0))
        else:
            rows[r].append(i)
            room[r] -= lengths[i]
    return rows
