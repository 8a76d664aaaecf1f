"""DoFIT: domain-aware federated instruction tuning (Xu et al., NeurIPS 2024).

"Domain-aware Federated Instruction Tuning with Alleviated Catastrophic Forgetting". Clients
belong to domains (the paper: Finance or Medical clients collaborating with General ones);
each domain has an intra-domain server, and an inter-domain server links the domains. One
round, in the paper's words and as implemented here:

1. **intra-domain aggregation** -- each domain FedAvgs the LoRA of its clients
   (:func:`intra_domain`), as conventional FIT (FedIT) does within one domain;
2. **inter-domain aggregation** -- "aggregates overlapping modules among the top-k important
   modules from different domains on the inter-domain server side" (:func:`top_modules`,
   :func:`inter_domain`): only a module in the top-k of every domain is averaged across the
   domains; the rest stays domain-specific;
3. **initialisation** -- DoFIT-base "completes the personalized initialization of the updating
   weight matrix on the intra-domain server side by assigning values to corresponding modules
   while keeping the rest unchanged"; the full DoFIT "further integrates a proximal perturbation
   initialization strategy" (:func:`proximal_start`). Each domain's clients start the next round
   from their domain's adapter.

What the paper states and what the lab chooses (OPEN: the paper leaves it open, or the lab
could not check the paper's exact form; the lab's choice is said):

* STATED: two tiers (intra-domain FedAvg, inter-domain aggregation of the overlap of the
  domains' top-k modules); the next round's domain adapter takes the inter-domain values on
  the overlap and keeps its own elsewhere (DoFIT-base), with a proximal perturbation in DoFIT.
* OPEN -- what a module is and how it is averaged. The lab reads a module as one adapted
  linear layer's LoRA pair (A, B) (the paper's settings adapt q and v, or other projections,
  of every layer), and averages A and B each on its own, as FedIT does.
* OPEN -- what a domain is in the lab. The paper's domains are datasets (FinGPT vs
  Alpaca-GPT4); the lab has one pool of task categories split over clients (Dirichlet). Lab:
  a client's domain is the category that dominates its data (:func:`domain_of`; ties: the
  first name in sorted order). Under ``data.partitioner=natural`` this is exact (one category
  per client); under a Dirichlet split a client also holds other categories, which its domain
  averages in. The server knows each client's domain, as DoFIT's intra-domain servers do.
* OPEN -- the importance score of a module. The paper compares its criterion with gradient-
  and singular-value-based ones (its appendix); the lab could not check the exact formula and
  uses the magnitude of the module's update to the base weight, ``||B A||_F`` of the domain's
  aggregated adapter (:func:`module_importance`; ties broken by module name).
* OPEN -- ``top_k``: the paper sweeps it; the lab's default keeps half of the modules
  (``top_k=0.5``; an int is a count, a float in (0, 1] a share of the modules).
* OPEN -- more than two domains. "Overlapping" is clear for the paper's two domains; the lab
  takes the modules in the top-k of *every* domain that trained this round and averages them
  over those domains, weighted by the samples each domain trained on this round. A round in
  which one domain trained has no inter-domain step; domains without clients in a round keep
  their adapter.
* OPEN -- the proximal perturbation. The lab could not check its exact form. Lab: on the
  overlapping modules a domain restarts from ``inter + proximal * (own - inter)``, a point
  between the inter-domain result and its own aggregate (``proximal=0`` is DoFIT-base's
  assignment; default ``0.5``).
* OPEN -- the one adapter evaluated as the global model. The paper scores each domain's
  model on its own domain's benchmarks; the lab's benchmark is shared, so the lab evaluates
  the sample-weighted mean of the domain adapters (A and B averaged on their own, like
  FedIT; :meth:`DoFIT.domain_states` gives each domain's adapter for per-domain scoring).
* Not counted: the traffic between the intra- and inter-domain servers (the paper's
  "S-Comm"); in the lab both tiers run in the one server process. Client traffic is one
  domain adapter each way, the size of FedIT's.
* Not supported: DevFT's stages. DoFIT keeps one adapter per domain and DevFT's transfer
  hands one adapter to the next stage. (The DevFT paper combines DevFT with FedSA-LoRA, not
  with DoFIT.)
* Where the STATED items come from: the paper's abstract and its Figure 1 caption (the lab
  could not consult the full text or code while writing this; the OPEN items say where that
  matters).

The global state holds every domain's adapter under ``dofit/<domain>/<LoRA key>``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from devft_lab.core.choices import ConfigError
from devft_lab.core.lora import delta
from devft_lab.fl.strategies import (ClientProfile, State, Strategy, clone_state, lora_pairs, normalise_weights,
                                     register, weighted_mean)

PREFIX = "dofit/"


# --------------------------------------------------------------------------- the rule, as pure functions
def domain_of(counts: Mapping[str, int]) -> str:
    """A client's domain: the category with the most of its examples (ties: first in sorted order)."""
    if not counts:
        raise ValueError("a client without examples has no domain")
    return max(sorted(counts), key=lambda c: counts[c])


def intra_domain(uploads: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                 domains: Sequence[str]) -> tuple[dict[str, State], dict[str, float]]:
    """Step 1: per domain, the sample-weighted mean of its clients' adapters (FedAvg within it);
    also each domain's samples this round."""
    out, size = {}, {}
    for d in sorted(set(domains)):
        idx = [i for i, x in enumerate(domains) if x == d]
        out[d] = weighted_mean([uploads[i] for i in idx], [weights[i] for i in idx])
        size[d] = float(sum(weights[i] for i in idx))
    return out, size


def module_importance(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``||B A||_F`` of every adapted module (the lab's importance score; OPEN, see the module doc)."""
    return {m: float(torch.linalg.matrix_norm(delta(state[ka].double(), state[kb].double())))
            for m, (ka, kb) in lora_pairs(state).items()}


def top_count(top_k: int | float, modules: int) -> int:
    """How many modules ``top_k`` keeps: an int is a count (capped), a float a share (at least one)."""
    if isinstance(top_k, int):
        return min(top_k, modules)
    return max(1, math.ceil(top_k * modules - 1e-9))


def top_modules(state: Mapping[str, torch.Tensor], top_k: int | float) -> set[str]:
    """The ``top_k`` most important modules of one domain's adapter."""
    score = module_importance(state)
    ranked = sorted(score, key=lambda m: (-score[m], m))
    return set(ranked[:top_count(top_k, len(ranked))])


def inter_domain(domain_states: Mapping[str, Mapping[str, torch.Tensor]], domain_weights: Mapping[str, float],
                 top_k: int | float) -> tuple[set[str], State]:
    """Step 2: ``(overlap, inter)``. ``overlap`` are the modules in the top-k of every domain;
    ``inter`` their A and B averaged over the domains, weighted by ``domain_weights``."""
    names = sorted(domain_states)
    overlap = set.intersection(*(top_modules(domain_states[d], top_k) for d in names))
    pairs = lora_pairs(domain_states[names[0]])
    keys = [k for m in sorted(overlap) for k in pairs[m]]
    inter = weighted_mean([domain_states[d] for d in names], [domain_weights[d] for d in names], keys) if keys else {}
    return overlap, inter


def proximal_start(own: Mapping[str, torch.Tensor], inter: Mapping[str, torch.Tensor], proximal: float) -> State:
    """Step 3: a domain's next start: ``inter + proximal * (own - inter)`` on the keys of ``inter``
    (``proximal=0``: DoFIT-base assigns the inter-domain values), its own tensors elsewhere."""
    out = clone_state(own)
    for k, v in inter.items():
        acc = v.double() + proximal * (own[k].double() - v.double())
        out[k] = acc.to(own[k].dtype)
    return out


# --------------------------------------------------------------------------- the strategy
@register
class DoFIT(Strategy):
    """DoFIT: FedAvg within each domain; across domains only the overlap of the domains'
    top-k modules is averaged; domains restart near that result on it (module doc)."""

    name = "dofit"
    single_stage = ("keeps one adapter per domain, while DevFT's knowledge transfer hands one adapter to the "
                    "next stage (the DevFT paper compares with DoFIT as a full-model baseline and does not "
                    "combine the two)")

    def __init__(self, top_k: int | float = 0.5, proximal: float = 0.5):
        ok_int = isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1
        ok_share = isinstance(top_k, float) and 0.0 < top_k <= 1.0
        if not (ok_int or ok_share):
            raise ConfigError(f"dofit: top_k = {top_k!r} must be a count of modules (an int >= 1) or a share "
                              "of them (a float in (0, 1], e.g. 0.5) (fed.strategy_params.top_k)")
        if isinstance(proximal, bool) or not isinstance(proximal, (int, float)) or not 0.0 <= proximal <= 1.0:
            raise ConfigError(f"dofit: proximal = {proximal!r} must be a number in [0, 1]; 0 is DoFIT-base "
                              "(fed.strategy_params.proximal)")
        self.top_k, self.proximal = top_k, float(proximal)
        self.domain_of_client: dict[int, str] = {}
        self.domain_size: dict[str, int] = {}

    def params(self) -> dict:
        return {"top_k": self.top_k, "proximal": self.proximal}

    # clients and domains --------------------------------------------------------
    def bind_clients(self, profiles: Sequence[ClientProfile], embedding=None) -> None:
        """Each client's domain (:func:`domain_of`) and each domain's examples."""
        self.domain_of_client = {c: domain_of(p.counts) for c, p in enumerate(profiles)}
        bad = sorted({d for d in self.domain_of_client.values() if "/" in d or "::" in d})
        if bad:
            raise ValueError(f"dofit: category names {bad} contain '/' or '::', which its state keys use; "
                             "rename the categories in the data")
        self.domain_size = {}
        for c, p in enumerate(profiles):
            d = self.domain_of_client[c]
            self.domain_size[d] = self.domain_size.get(d, 0) + p.size

    @property
    def domains(self) -> list[str]:
        """The domains, sorted (one domain, ``all``, before :meth:`bind_clients`)."""
        return sorted(self.domain_size) or ["all"]

    def domain(self, client: int | None) -> str:
        if client is None:
            raise ValueError("dofit needs to know the client (client=...) to pick its domain's adapter")
        if not self.domain_size:
            return "all"
        if client not in self.domain_of_client:
            raise ValueError(f"dofit: client {client} has no profile; bind_clients got "
                             f"{len(self.domain_of_client)} clients")
        return self.domain_of_client[client]

    def domain_states(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, State]:
        """``{domain: its adapter}`` (plain LoRA keys) from the global state."""
        out: dict[str, State] = {}
        for k, v in global_state.items():
            if not k.startswith(PREFIX):
                raise ValueError(f"dofit: {k!r} is not a domain key ({PREFIX}<domain>/<LoRA key>)")
            d, key = k[len(PREFIX):].split("/", 1)
            out.setdefault(d, {})[key] = v
        return out

    @staticmethod
    def _join(states: Mapping[str, Mapping[str, torch.Tensor]]) -> State:
        return {f"{PREFIX}{d}/{k}": v for d in sorted(states) for k, v in states[d].items()}

    # hooks ----------------------------------------------------------------------
    def init_global(self, template: Mapping[str, torch.Tensor]) -> State:
        """Every domain starts from the plan's adapter."""
        return self._join({d: clone_state(template) for d in self.domains})

    def downlink_keys(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        return list(state)  # a client receives a slice of these (downlink); nothing else is sent

    def downlink(self, global_state: Mapping[str, torch.Tensor], client: int | None = None) -> State:
        """The client's domain adapter (plain LoRA keys): what crosses the wire."""
        return self.client_init(global_state, None, client)

    def client_init(self, global_state, client_state=None, client=None) -> State:
        """The client's domain adapter. A state that is already one adapter (what a Flower client
        receives from :meth:`downlink`) is returned as it is."""
        if not any(k.startswith(PREFIX) for k in global_state):
            return clone_state(global_state)
        states = self.domain_states(global_state)
        d = self.domain(client)
        if d not in states:
            raise ValueError(f"dofit: the global state has no adapter for domain {d!r} (it has {sorted(states)}); "
                             "was it made before bind_clients?")
        return clone_state(states[d])

    def aggregate(self, global_state, client_states, weights, clients=None) -> State:
        """Intra-domain FedAvg, inter-domain average of the top-k overlap, proximal start (module doc)."""
        if not client_states:
            raise ValueError("aggregate() needs at least one client state")
        if clients is None or len(clients) != len(client_states):
            raise ValueError("dofit: aggregate needs clients=[the client of each upload] to find their domains")
        normalise_weights(weights, len(client_states))  # checks them
        states = self.domain_states(global_state)
        intra, size = intra_domain([self.uplink(s) for s in client_states], weights, [self.domain(c) for c in clients])
        if len(intra) > 1:
            _, inter = inter_domain(intra, size, self.top_k)
            intra = {d: proximal_start(s, inter, self.proximal) for d, s in intra.items()}
        states.update(intra)
        return self._join(states)

    def eval_state(self, global_state, client_states=None, weights=None) -> State:
        """The domains' adapters averaged, weighted by each domain's examples (OPEN, module doc)."""
        states = self.domain_states(global_state)
        names = sorted(states)
        return weighted_mean([states[d] for d in names], [self.domain_size.get(d, 1) for d in names])
