"""Stage schedule: how many layers (the *capacity*) each developmental stage trains.

The paper (STATED): S = 4 stages, the capacity doubles from stage to stage and the last
stage is the full model, e.g. 4 -> 8 -> 16 -> 32 for a 32-layer LLaMA. Rounds per stage
are fixed, their number is not given (OPEN: here a plain argument).

Rounding rule (OPEN, chosen here) for an L that is not a power of the growth factor::

    capacity_s = floor(L / g^(S - s) + 1/2)        s = 1..S   (round half up)
    clamp:  capacity_s >= 1,  strictly increasing,  capacity_S = L

so SmolLM2's 30 layers give 4 -> 8 -> 15 -> 30 (3.75 -> 4, 7.5 -> 8, 15, 30).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_NUM_STAGES = 4
DEFAULT_GROWTH = 2.0


@dataclass(frozen=True)
class Stage:
    """One developmental stage: ``capacity`` layers trained for ``rounds`` rounds."""

    index: int  # 0-based
    capacity: int
    rounds: int


def stage_capacities(num_layers: int, num_stages: int = DEFAULT_NUM_STAGES,
                     growth: float = DEFAULT_GROWTH) -> list[int]:
    """Capacities L_1 < ... < L_S = L from a growth factor.

    capacity_s = floor(L / g^(S-s) + 1/2), then clamped to be >= 1 and strictly
    increasing with capacity_S = L (forward pass ``max(c_s, c_{s-1} + 1)``, backward pass
    ``min(c_s, c_{s+1} - 1)``).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}.")
    if num_stages > num_layers:
        raise ValueError(
            f"{num_stages} stages need at least {num_stages} layers to grow strictly, but the "
            f"model has {num_layers}; use num_stages <= {num_layers}.")
    if not growth > 1:
        raise ValueError(f"growth must be > 1 (the paper uses 2), got {growth}.")
    caps = [max(1, math.floor(num_layers / growth ** (num_stages - s) + 0.5))
            for s in range(1, num_stages + 1)]
    caps[-1] = num_layers
    for s in range(1, num_stages):  # forward: strictly increasing
        caps[s] = max(caps[s], caps[s - 1] + 1)
    caps[-1] = num_layers
    for s in range(num_stages - 2, -1, -1):  # backward: stay below the next stage
        caps[s] = min(caps[s], caps[s + 1] - 1)
    validate_capacities(caps, num_layers)
    return caps


def validate_capacities(capacities: Sequence[int], num_layers: int) -> None:
    """Raise ValueError unless 1 <= L_1 < L_2 < ... < L_S = L."""
    caps = list(capacities)
    if not caps:
        raise ValueError("the schedule needs at least one stage capacity.")
    if any(int(c) != c for c in caps):
        raise ValueError(f"capacities must be integers, got {caps}.")
    if any(c < 1 for c in caps):
        raise ValueError(f"every capacity must be >= 1 layer, got {caps}.")
    if any(c > num_layers for c in caps):
        raise ValueError(
            f"capacity > L: the model has {num_layers} layers but the schedule asks for {caps}; "
            f"no stage can hold more layers than the model.")
    if any(b <= a for a, b in zip(caps, caps[1:])):
        raise ValueError(f"capacities must be strictly increasing, got {caps} (e.g. 4, 8, 15, {num_layers}).")
    if caps[-1] != num_layers:
        raise ValueError(
            f"the last stage must be the full model: last capacity is {caps[-1]}, "
            f"but the model has {num_layers} layers; append {num_layers}.")


def make_schedule(num_layers: int, num_stages: int = DEFAULT_NUM_STAGES, growth: float = DEFAULT_GROWTH,
                  capacities: Sequence[int] | None = None,
                  rounds: int | Sequence[int] = 1) -> list[Stage]:
    """The stages: capacities from ``growth`` (or the explicit list) and rounds per stage.

    ``rounds`` is one count for every stage (the paper: fixed) or one count per stage.
    """
    if capacities is None:
        caps = stage_capacities(num_layers, num_stages, growth)
    else:
        caps = [int(c) for c in capacities]
        validate_capacities(caps, num_layers)
    per = [int(rounds)] * len(caps) if isinstance(rounds, int) else [int(r) for r in rounds]
    if len(per) != len(caps):
        raise ValueError(f"got {len(per)} round counts for {len(caps)} stages; give one per stage or one int.")
    if any(r < 0 for r in per):
        raise ValueError(f"rounds per stage must be >= 0, got {per}.")
    return [Stage(i, c, r) for i, (c, r) in enumerate(zip(caps, per))]
