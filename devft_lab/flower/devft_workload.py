"""The ``devft`` workload: a ``devft-lab run`` config (DevFT, ProgFed or a plain baseline) on Flower.

It drives the same objects as the in-process simulation (:mod:`devft_lab.fl.simulation`):
the stage plan from :func:`devft_lab.runner.run.build_plan`, the strategy from the config, seeded
sampling, :func:`devft_lab.core.train.scheduled_lr`, and :func:`devft_lab.fl.client.client_update` for
local training. A run therefore ends with the same adapter as ``Simulation`` given the same
seeds and the same participating clients (``tests/test_flower_devft.py``).

**Server** (per global round ``t`` of stage ``s``): at a stage boundary it calls
``plan.end`` (knowledge transfer) and ``plan.begin`` (DGLG grouping and DBLF fusion on the
current global model), exactly as the simulation does. Each sampled client then receives
``strategy.downlink(global)`` and the stage's description ``info`` (groups, beta, fusion: a
few hundred bytes of JSON). On a client's first round in a stage, the server also sends the
stage-start tensors that the downlink leaves out: FedSA-LoRA's initial B, FFA-LoRA's frozen A.
For FedIT that set is empty.

**Client**: it holds the base model and its own data shard. It rebuilds the stage submodel
itself with ``plan.begin(s, info)``, fusing its local base layers by the server's groups and
beta. So the dense fused layers (``StageModel.delivery_bytes``, what the simulation counts as
``submodel_delivery_bytes``) never travel. :meth:`DevFTWorkload.summary` reports the bytes
this saves. The client's kept tensors (FedSA-LoRA's B) stay in its Flower ``context.state``
and are carried through stage changes with ``plan.carry``, stage by stage, as the simulation
carries them. At a stage end the server collects them (:meth:`DevFTWorkload.collect`) because
the transfer uses ``strategy.eval_state(global, kept)``, the mean B for FedSA-LoRA.

Each process (server, every client) resolves its own compute: ``model.dtype: auto`` and
``train.attention: auto`` are probed on the device it runs on, as a client on other hardware
should. The same maths, but other kernels round differently: for a run that must end bit for bit
where the simulation ends, name both (the ``tiny`` config does).

Strategies that depend on who the client is get its partition id, as in the simulation: DoFIT
sends each client its domain's adapter (``strategy.downlink(global, client=...)``) and aggregates
by domain; C2A's client generates its adapter from its own embedding (its profile, which every
process derives from the same partition in ``build``) and sends the hypernetwork back.

Not covered: FLoRA (it merges into the base weights every round, which the simulation does not
support with DevFT either) and evaluation during the run (``eval.*``). To evaluate, load the final
adapter (``final_state.safetensors``) with :func:`devft_lab.runner.run.export_adapter`'s format.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import torch

from devft_lab.core.train import scheduled_lr
from devft_lab.fl.client import LocalTraining, client_update
from devft_lab.fl.sampling import sample_clients
from devft_lab.fl.stages import StageModel, end_stage, stage_eval_state, stage_start_state
from devft_lab.flower.workload import ClientReply, State, Workload, register
from devft_lab.runner.config import from_dict, stage_rounds
from devft_lab.runner.run import build


def _clone(state: Mapping[str, torch.Tensor]) -> State:
    return {k: v.detach().clone() for k, v in state.items()}


def _stub(index: int, info: Mapping[str, Any]) -> StageModel:
    """A StageModel carrying only what ``plan.carry`` reads (index and info)."""
    return StageModel(index, None, {}, 0, 0, dict(info))


@register
class DevFTWorkload(Workload):
    """Settings: ``{"config": <resolved RunConfig as a dict>}`` (see :mod:`devft_lab.flower.cli`)."""

    name = "devft"

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        self.cfg = from_dict(self.settings["config"])
        self.rounds = stage_rounds(self.cfg)
        self.stage_of = [s for s, r in enumerate(self.rounds) for _ in range(r)]
        self._parts = None            # run.Parts, built on first use (server or client)
        # server state
        self.stage = -1
        self.sm = None                # current StageModel
        self.global_state: State = {}
        self.stage_start: State = {}  # stage-start tensors not in the downlink
        self.infos: list[dict[str, Any]] = []
        self.delivered: set[int] = set()
        self.samples: dict[int, int] = {}
        self.kept_view: dict[int, State] = {}  # clients' kept tensors, collected at a stage end
        self.account = {"stage_packages": 0, "stage_package_bytes": 0, "dense_submodel_bytes_avoided": 0}
        self.losses: list[float] = []

    # ------------------------------------------------------------------ shared
    @property
    def parts(self):
        if self._parts is None:
            self._parts = build(self.cfg, progress=False)
        return self._parts

    @property
    def num_rounds(self) -> int:
        return len(self.stage_of)

    @property
    def num_clients(self) -> int:
        return int(self.cfg.data.num_clients)

    def sample(self, rnd: int) -> list[int]:
        return sample_clients(self.num_clients, self.cfg.fed.clients_per_round, rnd, self.cfg.train.seed)

    # ------------------------------------------------------------------ server
    def prepare(self) -> None:
        """Load the model and data and begin stage 1 (grouping and fusion) before round 0."""
        self._goto_stage(0)

    def _goto_stage(self, stage: int) -> None:
        """End stages up to ``stage`` (transfer) and begin ``stage`` (grouping, fusion), as Simulation does."""
        p = self.parts
        while self.stage < stage:
            if self.stage >= 0:
                end_stage(p.plan, p.strategy, self.stage, self.global_state, self.kept_view, self.samples)
                self.kept_view = {}
            self.stage += 1
            self.sm = p.plan.begin(self.stage, None)
            self.global_state = stage_start_state(p.strategy, self.sm)
            down = set(p.strategy.downlink_keys(self.global_state))
            self.stage_start = {k: v.clone() for k, v in self.global_state.items() if k not in down}
            self.infos.append(json.loads(json.dumps(self.sm.info)))
            self.delivered = set()

    def instruction(self, rnd: int, client: int) -> tuple[State, dict[str, Any]]:
        self._goto_stage(self.stage_of[rnd])
        p, s = self.parts, self.parts.settings
        tensors = {f"down/{k}": v for k, v in p.strategy.downlink(self.global_state, client=client).items()}
        first = client not in self.delivered
        if first:
            tensors.update({f"stage/{k}": v for k, v in self.stage_start.items()})
            self.account["stage_packages"] += 1
            extra = sum(t.numel() * t.element_size() for t in self.stage_start.values())
            self.account["stage_package_bytes"] += len(json.dumps(self.infos[-1])) + extra
            self.account["dense_submodel_bytes_avoided"] += int(self.sm.delivery_bytes)
        config = {"stage": self.stage, "infos": self.infos, "first_in_stage": first,
                  "lr": scheduled_lr(rnd, rnd - self.stage_of.index(self.stage_of[rnd]), self.rounds[self.stage_of[rnd]],
                                     self.num_rounds, s.lr, s.lr_min, s.lr_schedule, s.lr_scope, s.lr_start,
                                     s.lr_length)}
        return tensors, config

    def aggregate(self, rnd: int, replies: Mapping[int, ClientReply]) -> dict[str, Any]:
        p = self.parts
        order = sorted(replies)
        self.global_state = p.strategy.aggregate(self.global_state, [replies[c].state for c in order],
                                                 [replies[c].num_examples for c in order], clients=order)
        for c in order:
            self.delivered.add(c)
            self.samples[c] = replies[c].num_examples
        loss = sum(float(replies[c].metrics.get("loss", 0.0)) for c in order) / len(order)
        self.losses.append(loss)
        return {"stage": self.stage, "capacity": self.sm.info.get("capacity"), "loss": loss}

    def _eval_state(self) -> State:
        """``strategy.eval_state`` over the global state and the collected kept tensors (as Simulation)."""
        return stage_eval_state(self.parts.strategy, self.global_state, self.kept_view, self.samples)

    def collect(self, rnd: int) -> tuple[list[int], dict[str, Any]] | None:
        """At a stage end, the kept tensors of every client that trained (FedSA-LoRA's B).

        The simulation transfers ``strategy.eval_state(global, kept Bs)`` into the full model
        at a stage end and reports it at the end of the run, so the server needs the Bs
        then. This traffic is not training uplink (the simulation does not count it
        either); the report lists it as ``bytes_collected``.
        """
        last_of_stage = rnd + 1 == self.num_rounds or self.stage_of[rnd + 1] != self.stage_of[rnd]
        if not last_of_stage or not self.parts.strategy.local_keys(self.global_state) or not self.samples:
            return None
        return sorted(self.samples), {"stage": self.stage, "infos": self.infos}

    def collected(self, rnd: int, replies: Mapping[int, ClientReply]) -> None:
        self.kept_view = {c: dict(r.state) for c, r in replies.items()}

    def result(self) -> State:
        return self._eval_state()

    def summary(self) -> dict[str, Any]:
        a = dict(self.account)
        a["downlink_saved_bytes"] = a["dense_submodel_bytes_avoided"] - a["stage_package_bytes"]
        a["stage_capacities"] = [i.get("capacity") for i in self.infos]
        a["groups"] = [i.get("groups") for i in self.infos]
        a["strategy"] = self.cfg.fed.strategy
        return a

    # ------------------------------------------------------------------ client
    def train(self, client: int, rnd: int, state: State, config: Mapping[str, Any],
              local: State | None) -> ClientReply:
        p = self.parts
        stage, infos = int(config["stage"]), list(config["infos"])
        local = dict(local or {})
        down = {k[5:]: v for k, v in state.items() if k.startswith("down/")}
        package = {k[6:]: v for k, v in state.items() if k.startswith("stage/")}
        if config.get("first_in_stage"):
            local = {k: v for k, v in local.items() if not k.startswith("stage/")}
            local.update({f"stage/{k}": v for k, v in package.items()})
            local["stage_of_package"] = torch.tensor(stage)
        elif int(local.get("stage_of_package", torch.tensor(-1))) != stage:
            raise RuntimeError(f"client {client}: no stage {stage} package kept (was this node restarted?)")
        global_state = {k[6:]: v for k, v in local.items() if k.startswith("stage/")}
        global_state.update(down)
        kept = self._carried(local, stage, infos)
        sm = p.plan.begin(stage, infos[stage])          # the fused submodel, built here
        start = p.strategy.client_init(global_state, kept or None, client=client)
        training = LocalTraining(**{**p.settings.training.__dict__, "lr": float(config["lr"])})
        res = client_update(sm.model, start, p.client_data[client], p.strategy, training, client=client,
                            round_idx=rnd, seed=p.settings.seed, global_state=global_state)
        local = {k: v for k, v in local.items() if not k.startswith("keep/")}
        local.update({f"keep/{k}": v.detach().clone() for k, v in (res.keep or {}).items()})
        local["stage_of_keep"] = torch.tensor(stage)
        return ClientReply(_clone(res.upload), res.num_samples,
                           {"loss": float(res.stats.loss), "tokens": int(res.stats.tokens)}, local=local)

    def report(self, client: int, config: Mapping[str, Any], local: State | None) -> ClientReply:
        """This client's kept tensors in the layout of stage ``config["stage"]``."""
        kept = self._carried(dict(local or {}), int(config["stage"]), list(config["infos"]))
        return ClientReply(_clone(kept), len(self.parts.client_data[client]))

    def _carried(self, local: State, stage: int, infos: list[dict[str, Any]]) -> State:
        """Kept tensors moved from the stage they were kept in to ``stage`` (one carry per boundary)."""
        kept = {k[5:]: v for k, v in local.items() if k.startswith("keep/")}
        if not kept:
            return {}
        s = int(local["stage_of_keep"])
        while s < stage:
            kept = self.parts.plan.carry(kept, _stub(s + 1, infos[s + 1]), _stub(s, infos[s]))
            s += 1
        return kept
