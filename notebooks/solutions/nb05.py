"""Worked answers to the exercises of notebook 05 (the aggregation zoo).

Each function runs in either profile (``DEVFT_PROFILE=ci``: the ``tiny`` config, seconds) and
asserts what it finds.
"""
from __future__ import annotations

import torch


def exercise_1():
    """Clients that share B (and differ in A) also give FedAvg no error.

    Eq. (1): the error is Σ_k p_k (B_k − B̄)(A_k − Ā). With every B_k = B̄ each term is 0,
    whatever the spread of the A_k. Without sharing, the same spread gives an error.
    """
    from devft_lab.teach import zoo

    for h in (0.25, 0.5, 1.0):
        shared_b = zoo.aggregation_gap(zoo.synthetic_clients(4, h, shared_b=True, seed=0))
        neither = zoo.aggregation_gap(zoo.synthetic_clients(4, h, seed=0))
        assert shared_b < 1e-12, (h, shared_b)
        assert neither > 1e-3, (h, neither)
        print(f"h = {h}: shared B gap {shared_b:.1e}, no sharing {neither:.4f}")


def _lora_state(config: str, modules: list[str]):
    """The starting LoRA state of ``config`` (DevFT off: the whole model) with ``modules`` adapted,
    and the sizes (d_in, d_out) of each adapted module of layer 0."""
    from torch import nn

    from devft_lab.core.layers import decoder_layers
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import build

    cfg = load_config(config, ["devft.enabled=false", f"lora.target_modules=[{','.join(modules)}]"])
    parts = build(cfg, progress=False)
    state = parts.plan.begin(0).start
    layer0 = decoder_layers(parts.model)[0]
    shapes = {}
    for name, module in layer0.named_modules():
        base = getattr(module, "base_layer", module)  # PEFT wraps each adapted nn.Linear
        if name.split(".")[-1] in modules and isinstance(base, nn.Linear):
            shapes[name.split(".")[-1]] = (base.in_features, base.out_features)
    assert sorted(shapes) == sorted(modules), shapes
    return cfg, state, shapes


def exercise_2():
    """Which is cheaper to send, A only (FedSA-LoRA) or B only (FFA-LoRA), depends on the shapes.

    A is r × d_in and B is d_out × r, so the A factors weigh r Σ d_in and the B factors r Σ d_out
    (per layer, times the bytes per number). With q_proj and v_proj only, grouped-query attention
    makes v_proj's output narrow, so B is lighter; adapting the MLP as well can tip the balance.
    """
    from devft_lab.fl.accounting import tensor_bytes
    from devft_lab.fl.strategies import get_strategy
    from devft_lab.teach import zoo
    from devft_lab.teach.profile import profile

    config = "tiny" if profile() == "ci" else "demo"
    for modules in (["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]):
        cfg, state, shapes = _lora_state(config, modules)
        per = zoo.factor_bytes(state)
        n_layers = sum(1 for k in state if k.endswith(f"{modules[0]}.lora_A.weight"))
        elem = next(iter(state.values())).element_size()
        assert per["A"] == n_layers * cfg.lora.r * sum(d_in for d_in, _ in shapes.values()) * elem
        assert per["B"] == n_layers * cfg.lora.r * sum(d_out for _, d_out in shapes.values()) * elem
        assert tensor_bytes(get_strategy("ffa-lora").uplink(state)) == per["B"]  # FFA-LoRA sends B only
        assert tensor_bytes(get_strategy("fedsa-lora").uplink(state)) == per["A"]  # FedSA-LoRA sends A only
        cheaper = "B only (FFA-LoRA)" if per["B"] < per["A"] else "A only (FedSA-LoRA)" if per["A"] < per["B"] else "neither (equal)"
        print(f"{cfg.model.name}, {'+'.join(modules)}: A {per['A'] / 1e3:.1f} KB, B {per['B'] / 1e3:.1f} KB "
              f"-> cheaper to send {cheaper}")


def exercise_3():
    """FFA-LoRA's exactness has a price: every update B̄ A_0 has its rows in the row space of the
    frozen A_0, whatever the clients do. FedIT's aggregate B̄ Ā moves A and leaves that space.
    """
    from devft_lab.fl.strategies import get_strategy, lora_pairs
    from devft_lab.teach import zoo

    template = zoo.synthetic_clients(1, 0.0, rank=2, out_dim=16, in_dim=16, seed=0)[0]
    template = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in template.items()}
    (ka, kb), = lora_pairs(template).values()
    residual = {}
    for name in ("ffa-lora", "fedit"):
        s = get_strategy(name)
        start = zoo.start_state(s, template)
        a0 = start[ka]  # the A every client starts the round from (FFA-LoRA: frozen for good)
        project = torch.linalg.pinv(a0) @ a0  # projector onto the row space of A_0 (in_dim x in_dim)
        clients = [zoo.local_update(s, start, 0.5, seed=c) for c in range(4)]
        new = s.aggregate(start, clients, [1.0, 2.0, 3.0, 4.0])
        delta = new[kb] @ new[ka]
        residual[name] = float((delta - delta @ project).norm() / delta.norm())
    assert residual["ffa-lora"] < 1e-10, residual
    assert residual["fedit"] > 1e-3, residual
    print(f"share of the update outside the row space of A_0: FFA-LoRA {residual['ffa-lora']:.1e}, "
          f"FedIT {residual['fedit']:.3f}")


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3):
        f()
