"""A client's round: load the adapter it was sent, train locally, hand back what it uploads.

Everything crosses this boundary as plain tensors (a LoRA *state*, ``{PEFT key: tensor}``)
and small dataclasses, so the in-process simulation and a Flower ``ClientApp`` call the
same :func:`client_update`. The model is shared: one frozen base in memory, whose LoRA
parameters are overwritten with the client's adapter at the start of its turn.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from devft_lab.core.lora import get_lora_state, lora_parameters, set_lora_state  # noqa: F401 (re-exported)
from devft_lab.fl.strategies import State, Strategy, set_trainable  # noqa: F401 (set_trainable re-exported)
from devft_lab.core.train import Compute, TrainStats, train_local


@dataclass
class LocalTraining:
    """The training knobs of one client round (from :class:`devft_lab.runner.config.TrainConfig`)."""

    steps: int
    batch_size: int
    lr: float
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    compute: Compute = Compute()  # how the steps run fast: packing, dtype, kernel, compile (devft_lab.core.train)


@dataclass
class ClientResult:
    """What a client produces in one round."""

    client: int
    upload: State  # what it sends (strategy.uplink)
    keep: State  # what it keeps for its next round (strategy.persist)
    num_samples: int  # its aggregation weight
    stats: TrainStats


def client_seed(seed: int, round_idx: int, client: int) -> int:
    """The seed of one client's round: depends on nothing else, so reruns and resumes agree."""
    return zlib.crc32(f"{seed}/{round_idx}/{client}".encode())


def client_update(model: torch.nn.Module, start: Mapping[str, torch.Tensor], data: Sequence[Mapping],
                  strategy: Strategy, training: LocalTraining, *, client: int, round_idx: int, seed: int,
                  global_state: Mapping[str, torch.Tensor] | None = None) -> ClientResult:
    """One client round on the shared ``model``.

    ``start`` is the state the client begins from (``strategy.client_init``: a LoRA adapter, or
    what the strategy turns into one in ``strategy.local_model``, C2A's hypernetwork), ``data``
    its encoded examples (:func:`devft_lab.core.train.encode_example`). The global torch RNG
    (dropout) and the batch order are seeded from ``(seed, round, client)``.
    ``global_state`` feeds a strategy's local penalty (FedProx).
    """
    with strategy.local_model(model, start, client=client) as local:
        s = client_seed(seed, round_idx, client)
        torch.manual_seed(s)
        ref = dict(global_state if global_state is not None else start)
        params = {k: p for k, p in lora_parameters(model).items() if p.requires_grad}
        with torch.no_grad():
            penalised = strategy.local_penalty(params, ref) is not None  # the default hook: None
        penalty = (lambda: strategy.local_penalty(params, ref)) if penalised else None  # noqa: E731
        stats = train_local(model, data, steps=training.steps, batch_size=training.batch_size, lr=training.lr,
                            seed=s, grad_accum=training.grad_accum, max_grad_norm=training.max_grad_norm,
                            penalty=penalty, reparam=local.reparam, compute=training.compute)
        trained = local.state()
    return ClientResult(client, strategy.uplink(trained), strategy.persist(trained), len(data), stats)
