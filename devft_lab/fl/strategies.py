"""Federated LoRA strategies: what a client starts from, trains, uploads, and how the server aggregates.

A LoRA *state* is the flat ``{PEFT key: tensor}`` of :mod:`devft_lab.core.lora` (which also
holds the key helpers :func:`canonical_key`, :func:`lora_pairs` ... and the seeded
initialiser; they are re-exported here). The adapted module computes
``W x + s * B A x`` with ``s = alpha / r``.

Every strategy answers the same questions, so the in-process simulation and a Flower app
run the same code:

===================  ========================================================================
``trainable(key)``   is this tensor trained on the client?
``client_init``      the state a client starts a round from (global + its own local state)
``uplink_keys``      what a client sends; :meth:`Strategy.uplink` cuts a state down to it
``downlink_keys``    what the server sends; :meth:`Strategy.downlink`
``local_keys``       what a client keeps between rounds (FedSA-LoRA's B); :meth:`Strategy.persist`
``aggregate``        new global state from the clients' uploads and weights (sample counts)
``eval_state``       the one adapter to evaluate as "the global model"
``bind_clients``     what the strategy may know of each client (:class:`ClientProfile`:
                     its examples per category; DoFIT's domains, C2A's client embeddings)
``local_model``      load a client's start state into the model, train, read the state back
                     (default: the LoRA tensors themselves; C2A: a hypernetwork generates them)
===================  ========================================================================

``client_init``, ``downlink`` and ``aggregate`` are also told which client(s) they serve
(``client=`` / ``clients=``); only strategies that depend on who the client is (DoFIT) read it.
Usually the global state *is* a LoRA adapter; DoFIT's holds one adapter per domain and C2A's
holds the hypernetwork, and both turn it into a LoRA adapter in ``client_init`` /
``local_model`` / ``eval_state``. A strategy that cannot run a staged plan (DevFT, ProgFed)
says why in :attr:`Strategy.single_stage`.

Implemented (``get_strategy(name, **params)``):

* ``fedit``      FedIT (Zhang et al. 2024): FedAvg of A and B, sample-size weighted.
                 Averages A and B separately, so ``mean(B) mean(A) != mean(B A)`` (inexact).
* ``ffa-lora``   FFA-LoRA (Sun et al. 2024): A frozen at a shared seeded init, only B trained,
                 sent and averaged; exact, because ``mean(B_k) A = mean(B_k A)``.
* ``fedsa-lora`` FedSA-LoRA (Guo et al. 2025): A averaged and shared, B stays on the client.
* ``flora``      FLoRA (Wang et al. 2024): stacking. The server concatenates the clients' A
                 along the rank and the ``p_k``-scaled B, so ``B_stack A_stack = sum_k p_k B_k A_k``
                 exactly (also for different ranks); the product is merged into the base
                 weights every round and clients restart from a fresh adapter.
* ``fedprox``    FedProx (Li et al. 2020): FedIT aggregation plus the proximal term
                 ``mu/2 ||w - w_global||^2`` (:func:`proximal_term`) added to the local loss.
* ``dofit``      DoFIT (Xu et al. 2024): FedAvg within each domain; across domains only the
                 modules in every domain's top-k are averaged, and each domain restarts from
                 (near) that result on them (:mod:`devft_lab.fl.dofit`).
* ``c2a``        C2A (Kim et al. 2023): a factorised hypernetwork generates each client's LoRA
                 from its client embedding; the hypernetwork is what is sent and averaged
                 (:mod:`devft_lab.fl.c2a`).

All averaging is accumulated in float64 and cast back to the tensors' dtype.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from devft_lab.core.choices import ConfigError, closest
from devft_lab.core.lora import (State, canonical_key, delta, get_lora_state, is_lora_a, is_lora_b,  # noqa: F401
                                 lora_pairs, lora_parameters, module_name, seeded_lora_init, set_lora_state)

if TYPE_CHECKING:
    from devft_lab.core.train import Reparametrization


# --------------------------------------------------------------------------- averaging
def normalise_weights(weights: Sequence[float], n: int | None = None) -> list[float]:
    """Non-negative weights (sample counts) -> probabilities ``p_k`` summing to 1."""
    w = [float(x) for x in weights]
    if n is not None and len(w) != n:
        raise ValueError(f"got {len(w)} weights for {n} client states; give one weight per client")
    if not w:
        raise ValueError("no weights: aggregation needs at least one client")
    if any(math.isnan(x) or x < 0 or math.isinf(x) for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {w}")
    total = sum(w)
    if total <= 0:
        raise ValueError(f"weights sum to {total}; at least one client needs a positive weight")
    return [x / total for x in w]


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.device.type != "mps" else torch.float32


def weighted_mean(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                  keys: Iterable[str] | None = None) -> State:
    """``sum_k p_k state_k[key]`` for each key, accumulated in float64, in the first state's dtype."""
    p = normalise_weights(weights, len(states))
    keys = list(states[0].keys()) if keys is None else list(keys)
    out: State = {}
    for k in keys:
        ref = states[0][k]
        acc = torch.zeros(ref.shape, dtype=_acc_dtype(ref), device=ref.device)
        for pk, s in zip(p, states):
            if s[k].shape != ref.shape:
                raise ValueError(f"{k}: client shapes differ ({tuple(s[k].shape)} vs {tuple(ref.shape)})")
            acc += pk * s[k].detach().to(device=ref.device, dtype=acc.dtype)
        out[k] = acc.to(ref.dtype)
    return out


def clone_state(state: Mapping[str, torch.Tensor]) -> State:
    return {k: v.detach().clone() for k, v in state.items()}


def proximal_term(params: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor],
                  mu: float) -> torch.Tensor:
    """FedProx's ``mu/2 * sum ||w - w_global||^2`` over the keys of ``params`` found in the global state.

    ``params`` may come from ``model.named_parameters()`` (adapter names are matched via
    :func:`canonical_key`); the result keeps the autograd graph so ``loss + proximal_term``
    can be back-propagated.
    """
    glob = {canonical_key(k): v for k, v in global_state.items()}
    total = None
    for k, w in params.items():
        g = glob.get(canonical_key(k))
        if g is None:
            continue
        d = (w - g.detach().to(device=w.device, dtype=w.dtype)).pow(2).sum()
        total = d if total is None else total + d
    if total is None:
        ref = next(iter(params.values()), None)
        return torch.zeros((), device=ref.device if ref is not None else "cpu")
    return 0.5 * float(mu) * total


# --------------------------------------------------------------------------- what a strategy knows of a client
@dataclass(frozen=True)
class ClientProfile:
    """What a strategy may know of one client: its examples per category, and the examples.

    The category is the example's ``category`` field (the lab's task). DoFIT reads the counts
    (a client's domain), C2A the counts (its label distribution) and the examples (its
    context); the other strategies ignore profiles.
    """

    counts: Mapping[str, int]
    examples: Sequence[Mapping] = ()  # encoded examples (input_ids, labels)

    @property
    def size(self) -> int:
        return int(sum(self.counts.values()))


def client_profiles(parts: Sequence[Sequence[int]], categories: Sequence[str],
                    examples: Sequence[Sequence[Mapping]] | None = None) -> list[ClientProfile]:
    """One :class:`ClientProfile` per client of a partition: ``parts[c]`` indexes ``categories``
    (the pool's); ``examples[c]`` are client c's encoded examples, if given."""
    out = []
    for c, idx in enumerate(parts):
        counts: dict[str, int] = {}
        for i in idx:
            counts[str(categories[i])] = counts.get(str(categories[i]), 0) + 1
        out.append(ClientProfile(dict(sorted(counts.items())), tuple(examples[c]) if examples is not None else ()))
    return out


@dataclass
class LocalRound:
    """What :meth:`Strategy.local_model` hands the client's training loop."""

    state: Callable[[], State]  # the trained state, read after training
    reparam: Reparametrization | None = None  # what the optimiser steps instead of the model's LoRA (C2A)


def set_trainable(model: torch.nn.Module, strategy: "Strategy") -> int:
    """``requires_grad`` on exactly the LoRA tensors the strategy trains; returns their count."""
    n = 0
    for k, p in lora_parameters(model).items():
        p.requires_grad_(strategy.trainable(k))
        n += p.numel() if p.requires_grad else 0
    return n


# --------------------------------------------------------------------------- strategies
class Strategy:
    """Base class: FedAvg of everything that is uploaded. Subclasses change the key rules."""

    name = "base"
    exact = False  # does aggregate() reproduce sum_k p_k B_k A_k exactly?
    requires_merge = False  # FLoRA: the runtime merges the aggregate into the base weights
    single_stage = ""  # non-empty: why this strategy runs only one-stage (full-model) plans

    def __init__(self, **params):
        if params:
            raise ConfigError(f"{self.name} takes no parameters, got: {', '.join(params)}")

    def params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        p = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({p})"

    # key rules ----------------------------------------------------------------
    def trainable(self, key: str) -> bool:
        """Is this tensor trained on the client? (default: every LoRA tensor)."""
        return is_lora_a(key) or is_lora_b(key)

    def _uploads(self, key: str) -> bool:
        return True

    def _downloads(self, key: str) -> bool:
        return True

    def _keeps_local(self, key: str) -> bool:
        return False

    def uplink_keys(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        return [k for k in state if self._uploads(k)]

    def downlink_keys(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        return [k for k in state if self._downloads(k)]

    def local_keys(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        return [k for k in state if self._keeps_local(k)]

    def uplink(self, client_state: Mapping[str, torch.Tensor]) -> State:
        """The part of a trained client state that goes to the server."""
        return {k: client_state[k] for k in self.uplink_keys(client_state)}

    def downlink(self, global_state: Mapping[str, torch.Tensor], client: int | None = None) -> State:
        """The part of the global state that goes to a client (``client``: which one, for DoFIT)."""
        return {k: global_state[k] for k in self.downlink_keys(global_state)}

    def persist(self, client_state: Mapping[str, torch.Tensor]) -> State:
        """What the client keeps for its next round (empty unless the strategy has local state)."""
        return {k: client_state[k].detach().clone() for k in self.local_keys(client_state)}

    # hooks the runtime calls on every strategy (defaults: no-ops) -------------------
    def init_global(self, template: Mapping[str, torch.Tensor]) -> State:
        """The global adapter a run starts from, given the plan's first-stage adapter
        (default: that adapter; FFA-LoRA redraws A from its shared seed)."""
        return clone_state(template)

    def local_penalty(self, params: Mapping[str, torch.Tensor],
                      global_state: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """A term added to the client's loss each step, or ``None`` for none (default; FedProx
        returns its proximal term)."""
        return None

    def bind_clients(self, profiles: Sequence[ClientProfile], embedding: torch.nn.Module | None = None) -> None:
        """Tell the strategy about the clients (client ``c`` is ``profiles[c]``); ``embedding`` is the
        base model's input embedding. Called once by the runtime before the run (default: ignored)."""

    @contextlib.contextmanager
    def local_model(self, model: torch.nn.Module, start: Mapping[str, torch.Tensor], *,
                    client: int | None = None) -> Iterator[LocalRound]:
        """``model`` made ready to train one client round from ``start``; yields a
        :class:`LocalRound`: how to read the trained state (what :meth:`uplink` and :meth:`persist`
        cut from), and what the optimiser steps if not the model's own tensors.

        Default: ``start`` is a LoRA adapter, copied into the model's LoRA tensors; those of
        :meth:`trainable` train; the trained state is the model's adapter.
        """
        set_lora_state(model, start)
        set_trainable(model, self)
        yield LocalRound(lambda: get_lora_state(model))

    # round ---------------------------------------------------------------------
    def client_init(self, global_state: Mapping[str, torch.Tensor],
                    client_state: Mapping[str, torch.Tensor] | None = None, client: int | None = None) -> State:
        """The state a client starts from: the global state, with its local keys if it has any."""
        out = clone_state(global_state)
        if client_state:
            for k in self.local_keys(global_state):
                if k in client_state:
                    out[k] = client_state[k].detach().clone()
        return out

    def aggregate(self, global_state: Mapping[str, torch.Tensor],
                  client_states: Sequence[Mapping[str, torch.Tensor]],
                  weights: Sequence[float], clients: Sequence[int] | None = None) -> State:
        """New global state: sample-weighted mean of the uploaded keys; other keys kept from global.
        ``clients``: who sent each upload (read only by strategies that need it, DoFIT)."""
        if not client_states:
            raise ValueError("aggregate() needs at least one client state")
        ups = [self.uplink(s) for s in client_states]
        out = clone_state(global_state)
        out.update(weighted_mean(ups, weights, self.uplink_keys(global_state)))
        return out

    def eval_state(self, global_state: Mapping[str, torch.Tensor],
                   client_states: Sequence[Mapping[str, torch.Tensor]] | None = None,
                   weights: Sequence[float] | None = None) -> State:
        """The single adapter evaluated as the global model (default: the global state)."""
        return clone_state(global_state)


class FedIT(Strategy):
    """FedIT: FedAvg over LoRA A and B, each averaged on its own (sample-size weighted)."""

    name = "fedit"


class FedProx(FedIT):
    """FedProx: FedIT's aggregation; the local loss adds ``mu/2 ||w - w_global||^2``."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01):
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0:
            raise ConfigError(f"fedprox: mu = {mu!r} must be a number >= 0 (fed.strategy_params.mu)")
        self.mu = float(mu)

    def params(self) -> dict:
        return {"mu": self.mu}

    def local_penalty(self, params: Mapping[str, torch.Tensor],
                      global_state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``mu/2 ||w - w_global||^2``, added to the client's loss each step (Li et al. 2020)."""
        return proximal_term(params, global_state, self.mu)


class FFALoRA(Strategy):
    """FFA-LoRA: A frozen at a shared seeded init; only B is trained, sent and averaged.

    Since every client multiplies the same A, ``mean_k(B_k) A = mean_k(B_k A)``: the
    aggregation is exact. A is never sent: every party rebuilds it with
    :meth:`init_global` from ``a_seed`` (0 downlink bytes for A).
    """

    name = "ffa-lora"
    exact = True

    def __init__(self, a_seed: int = 0):
        self.a_seed = int(a_seed)

    def params(self) -> dict:
        return {"a_seed": self.a_seed}

    def init_global(self, template: Mapping[str, torch.Tensor]) -> State:
        """The shared starting adapter: A from ``a_seed``, B = 0."""
        return seeded_lora_init(template, self.a_seed)

    def trainable(self, key: str) -> bool:
        return is_lora_b(key)

    def _uploads(self, key: str) -> bool:
        return not is_lora_a(key)

    _downloads = _uploads

    def aggregate(self, global_state, client_states, weights, clients=None) -> State:
        out = super().aggregate(global_state, client_states, weights)
        for k in global_state:  # A is the global one, whatever a client holds
            if is_lora_a(k):
                out[k] = global_state[k].detach().clone()
        return out


class FedSALoRA(Strategy):
    """FedSA-LoRA: A is shared (averaged), B stays on each client and is never uploaded.

    Client ``k`` starts round t from ``(A_global, B_k)`` (its own B from its last round,
    the global initial B the first time it is sampled). The server's global state keeps
    the initial B untouched, since it never sees a trained one.

    Evaluation (``eval_mode``):

    * ``"mean_b"`` (default) -- one global adapter: ``A_global`` with the sample-weighted
      mean of the clients' local Bs (:meth:`eval_state`). Comparable with the other
      strategies on shared benchmarks (as DevFT's paper does); needs the Bs to be collected
      for evaluation only, which is not training traffic and is not counted as uplink.
    * ``"per_client"`` -- each client's own ``(A_global, B_k)`` (:meth:`eval_states`), the
      personalised reading of the FedSA-LoRA paper; report the weighted mean of the scores.
    """

    name = "fedsa-lora"

    def __init__(self, eval_mode: str = "mean_b"):
        if eval_mode not in ("mean_b", "per_client"):
            raise ConfigError(
                f"fedsa-lora: eval_mode = {eval_mode!r} is not mean_b or per_client "
                "(fed.strategy_params.eval_mode)"
            )
        self.eval_mode = eval_mode

    def params(self) -> dict:
        return {"eval_mode": self.eval_mode}

    def _uploads(self, key: str) -> bool:
        return not is_lora_b(key)

    _downloads = _uploads

    def _keeps_local(self, key: str) -> bool:
        return is_lora_b(key)

    def eval_state(self, global_state, client_states=None, weights=None) -> State:
        """``A_global`` + sample-weighted mean of the local Bs (the global B if no client state)."""
        out = clone_state(global_state)
        if client_states:
            w = weights if weights is not None else [1.0] * len(client_states)
            bkeys = [k for k in global_state if is_lora_b(k)]
            out.update(weighted_mean(client_states, w, bkeys))
        return out

    def eval_states(self, global_state, client_states: Sequence[Mapping[str, torch.Tensor]]) -> list[State]:
        """Per-client adapters ``(A_global, B_k)``."""
        return [self.client_init(global_state, s) for s in client_states]


class FLoRA(Strategy):
    """FLoRA: stacking-based exact aggregation, clients may use different ranks.

    Per round:

    1. every sampled client starts from a fresh adapter (``fresh_adapter``: A from a seed
       that depends on the round, B = 0) on top of the current base weights;
    2. after local training it uploads ``(A_k, B_k)``;
    3. the server stacks (:meth:`aggregate`)::

           A_stack = [A_1; A_2; ...; A_K]          (sum_k r_k, in)
           B_stack = [p_1 B_1, p_2 B_2, ..., p_K B_K]   (out, sum_k r_k)
           B_stack @ A_stack = sum_k p_k B_k A_k

       and sends the stacked adapter to the clients (the downlink grows with K);
    4. everyone merges ``s * B_stack @ A_stack`` into the base weights
       (:func:`stacked_delta`, :func:`merge_delta`), with ``s = alpha / r`` the clients'
       LoRA scaling -- *not* ``alpha / sum(r_k)``, which PEFT would use if the stacked
       adapter were loaded as a rank-``sum r_k`` LoRA.

    ``client_init`` returns a copy of the global state; the runtime passes
    ``fresh_adapter(template, round)`` as FLoRA's global state at each round start
    (``requires_merge`` tells it to).
    """

    name = "flora"
    exact = True
    requires_merge = True
    single_stage = "merges adapters into the base weights every round"

    def __init__(self, a_seed: int = 0):
        self.a_seed = int(a_seed)

    def params(self) -> dict:
        return {"a_seed": self.a_seed}

    def fresh_adapter(self, template: Mapping[str, torch.Tensor], round_idx: int) -> State:
        return seeded_lora_init(template, self.a_seed * 1_000_033 + int(round_idx))

    def aggregate(self, global_state, client_states, weights, clients=None) -> State:
        if not client_states:
            raise ValueError("aggregate() needs at least one client state")
        p = normalise_weights(weights, len(client_states))
        ups = [self.uplink(s) for s in client_states]
        out = clone_state(global_state)
        for mod, (ka, kb) in lora_pairs(global_state).items():
            out[ka] = torch.cat([u[ka].detach() for u in ups], dim=0)
            out[kb] = torch.cat(
                [(pk * u[kb].detach().to(torch.float64)).to(u[kb].dtype) for pk, u in zip(p, ups)], dim=1
            )
        others = [k for k in global_state if not (is_lora_a(k) or is_lora_b(k))]
        if others:
            out.update(weighted_mean(ups, weights, others))
        return out

    def aggregate_delta(self, client_states, weights, scalings: float | Sequence[float] = 1.0
                        ) -> dict[str, torch.Tensor]:
        """Dense ``sum_k p_k s_k B_k A_k`` per module (float32; float64 inputs stay float64)."""
        p = normalise_weights(weights, len(client_states))
        s = [float(scalings)] * len(p) if isinstance(scalings, (int, float)) else [float(x) for x in scalings]
        out = {}
        for mod, (ka, kb) in lora_pairs(client_states[0]).items():
            acc = None
            for pk, sk, st in zip(p, s, client_states):
                d = delta(st[ka].detach().to(torch.float64), st[kb].detach().to(torch.float64))
                acc = pk * sk * d if acc is None else acc + pk * sk * d
            ref = client_states[0][ka].dtype
            out[mod] = acc.to(torch.float64 if ref == torch.float64 else torch.float32)
        return out


def stacked_delta(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense ``B @ A`` per module of any LoRA state (for FLoRA: the stacked one), in float32."""
    out = {}
    for mod, (ka, kb) in lora_pairs(state).items():
        out[mod] = delta(state[ka].detach().to(torch.float64), state[kb].detach().to(torch.float64)).float()
    return out


def base_weight_key(module: str, base_state: Mapping[str, torch.Tensor]) -> str:
    """Find the base weight of an adapted module in a (PEFT or plain) model state dict."""
    cands = [f"{module}.base_layer.weight", f"{module}.weight"]
    stripped = module[len("base_model.model."):] if module.startswith("base_model.model.") else module
    cands += [f"{stripped}.weight", f"base_model.model.{stripped}.base_layer.weight"]
    for c in cands:
        if c in base_state:
            return c
    raise KeyError(f"no base weight for LoRA module {module!r}; tried {cands}")


def merge_delta(base_state: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
                scaling: float = 1.0, inplace: bool = False) -> dict[str, torch.Tensor]:
    """``W += scaling * delta`` for every module of ``delta``.

    ``base_state`` is a model state dict (``model.state_dict()``, PEFT-wrapped or not). With
    ``inplace=True`` the tensors are updated in place (a live model's ``state_dict()``
    shares storage with its parameters, so this merges into the model) and only the changed
    entries are returned; otherwise a new dict with the changed tensors replaced is returned.
    """
    out = dict(base_state) if not inplace else {}
    for mod, d in delta.items():
        k = base_weight_key(mod, base_state)
        w = base_state[k]
        if tuple(w.shape) != tuple(d.shape):
            raise ValueError(f"{k}: delta shape {tuple(d.shape)} != weight shape {tuple(w.shape)}")
        new = (w.detach().to(torch.float32) + scaling * d.to(device=w.device, dtype=torch.float32)).to(w.dtype)
        if inplace:
            with torch.no_grad():
                w.copy_(new)
            out[k] = w
        else:
            out[k] = new
    return out


# --------------------------------------------------------------------------- registry
STRATEGIES: dict[str, type[Strategy]] = {
    "fedit": FedIT,
    "ffa-lora": FFALoRA,
    "fedsa-lora": FedSALoRA,
    "flora": FLoRA,
    "fedprox": FedProx,
}
STRATEGY_ALIASES: dict[str, str] = {"fedavg": "fedit", "ffa": "ffa-lora", "fedsa": "fedsa-lora"}


def init_params(cls: type[Strategy]) -> tuple[str, ...]:
    """The parameters a strategy class accepts: the named arguments of its ``__init__``."""
    sig = inspect.signature(cls.__init__)
    return tuple(n for n, p in sig.parameters.items()
                 if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


# name -> accepted parameters, derived from the classes (the one table runner.config checks against)
STRATEGY_PARAMS: dict[str, tuple[str, ...]] = {n: init_params(c) for n, c in STRATEGIES.items()}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy defined in another module known by its ``name``."""
    STRATEGIES[cls.name] = cls
    STRATEGY_PARAMS[cls.name] = init_params(cls)
    return cls


# DoFIT and C2A live in their own modules (they build on the classes above) and register there.
import devft_lab.fl.c2a  # noqa: E402,F401
import devft_lab.fl.dofit  # noqa: E402,F401


def canonical_strategy(name: str) -> str:
    """Lower-case, ``_`` -> ``-``, aliases resolved (``FedSA`` -> ``fedsa-lora``)."""
    n = str(name).strip().lower().replace("_", "-")
    return STRATEGY_ALIASES.get(n, n)


def get_strategy(name: str, **params) -> Strategy:
    """A strategy by name (case and ``_``/``-`` insensitive; aliases fedavg, ffa, fedsa).

    Raises :class:`~devft_lab.core.choices.ConfigError` for an unknown name, a parameter the
    strategy does not take, or a bad parameter value (each strategy checks its own)."""
    key = canonical_strategy(name)
    if key not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {name!r}.{closest(key, STRATEGIES)} "
            f"Known strategies: {', '.join(STRATEGIES)} (fed.strategy)."
        )
    allowed = STRATEGY_PARAMS[key]
    for p in params:
        if p not in allowed:
            raise ConfigError(
                f"fed.strategy_params.{p}: strategy {key} has no parameter {p!r}; "
                f"it accepts: {', '.join(allowed) or 'none'}"
            )
    return STRATEGIES[key](**params)


def from_config(fed) -> Strategy:
    """The strategy of a :class:`devft_lab.runner.config.FedConfig`."""
    return get_strategy(fed.strategy, **dict(fed.strategy_params))
