"""Properties of DoFIT's domain-aware aggregation (pure tensor tests, no model)."""
import pytest
import torch

from devft_lab.core.choices import ConfigError
from devft_lab.fl.accounting import tensor_bytes
from devft_lab.fl.dofit import (domain_of, inter_domain, module_importance, proximal_start, top_count,
                                top_modules)
from devft_lab.fl.strategies import STRATEGY_PARAMS, ClientProfile, get_strategy, lora_pairs

PREFIX = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight"


def make_state(seed=0, layers=3, r=2, d=6):
    g = torch.Generator().manual_seed(seed)
    st = {}
    for i in range(layers):
        for m, o in (("q", 6), ("v", 3)):
            st[PREFIX.format(i=i, m=m, ab="A")] = torch.randn(r, d, generator=g)
            st[PREFIX.format(i=i, m=m, ab="B")] = torch.randn(o, r, generator=g)
    return st


def bound(profiles, **params):
    s = get_strategy("dofit", **params)
    s.bind_clients([ClientProfile(p) for p in profiles])
    return s


# clients 0, 1: domain "fin"; 2, 3: domain "gen"; 4: domain "med" (sizes 10, 30, 20, 20, 5)
PROFILES = [{"fin": 7, "gen": 3}, {"fin": 30}, {"gen": 20}, {"gen": 12, "fin": 8}, {"med": 5}]


def fedit(uploads, weights):
    return get_strategy("fedit").aggregate(uploads[0], uploads, weights)


def test_domain_is_the_dominant_category():
    assert domain_of({"a": 1, "b": 3}) == "b"
    assert domain_of({"b": 2, "a": 2}) == "a"  # ties: sorted order
    s = bound(PROFILES)
    assert s.domains == ["fin", "gen", "med"]
    assert [s.domain(c) for c in range(5)] == ["fin", "fin", "gen", "gen", "med"]
    assert s.domain_size == {"fin": 40, "gen": 40, "med": 5}
    assert STRATEGY_PARAMS["dofit"] == ("top_k", "proximal")


def test_one_domain_is_fedavg_within_it():
    s = bound([{"x": 3}, {"x": 5, "y": 1}, {"x": 2}], top_k=1, proximal=0.5)
    g = s.init_global(make_state(0))
    ups, w = [make_state(1), make_state(2), make_state(3)], [3, 6, 2]
    out = s.domain_states(s.aggregate(g, ups, w, clients=[0, 1, 2]))
    ref = fedit(ups, w)
    assert list(out) == ["x"] and all(torch.allclose(out["x"][k], ref[k]) for k in ref)
    unbound = get_strategy("dofit")  # without profiles: one domain, "all"
    g = unbound.init_global(make_state(0))
    out = unbound.client_init(unbound.aggregate(g, ups, w, clients=[7, 8, 9]), client=7)
    assert all(torch.allclose(out[k], ref[k]) for k in ref)


def test_k_covering_every_module_makes_the_inter_domain_step_fedavg_over_domains():
    states, weights = {"a": make_state(1), "b": make_state(2), "c": make_state(3)}, {"a": 1.0, "b": 2.0, "c": 5.0}
    overlap, inter = inter_domain(states, weights, top_k=1.0)
    assert overlap == set(lora_pairs(states["a"]))
    ref = get_strategy("fedit").aggregate(states["a"], list(states.values()), list(weights.values()))
    assert inter.keys() == ref.keys() and all(torch.allclose(inter[k], ref[k]) for k in ref)
    # ... so with DoFIT-base's assignment (proximal=0) every domain restarts from FedIT's aggregate
    s = bound(PROFILES, top_k=1.0, proximal=0.0)
    ups, w, who = [make_state(i + 10) for i in range(5)], [10, 30, 20, 20, 5], [0, 1, 2, 3, 4]
    new = s.domain_states(s.aggregate(s.init_global(make_state(0)), ups, w, clients=who))
    ref = fedit(ups, w)
    for d in ("fin", "gen", "med"):
        assert all(torch.allclose(new[d][k], ref[k], atol=1e-6) for k in ref), d


def test_only_the_overlap_of_the_top_k_is_shared():
    a, b = make_state(1), make_state(2)
    pairs = sorted(lora_pairs(a))
    # make module 0 the most important in a, module 1 in b, module 2 important in both
    for st, big in ((a, (pairs[0], pairs[2])), (b, (pairs[1], pairs[2]))):
        for m in big:
            st[lora_pairs(st)[m][1]] *= 100.0
    assert top_modules(a, 2) == {pairs[0], pairs[2]} and top_modules(b, 2) == {pairs[1], pairs[2]}
    overlap, inter = inter_domain({"a": a, "b": b}, {"a": 1.0, "b": 3.0}, top_k=2)
    assert overlap == {pairs[2]}
    assert set(inter) == set(lora_pairs(a)[pairs[2]])
    ka, kb = lora_pairs(a)[pairs[2]]
    assert torch.allclose(inter[kb], 0.25 * a[kb] + 0.75 * b[kb])
    lam = 0.25
    start = proximal_start(a, inter, lam)
    assert torch.allclose(start[ka], inter[ka] + lam * (a[ka] - inter[ka]))  # the proximal perturbation
    others = [k for k in a if k not in inter]
    assert others and all(torch.equal(start[k], a[k]) for k in others)  # the rest stays the domain's own
    assert all(torch.equal(proximal_start(a, inter, 1.0)[k], a[k]) for k in a)  # proximal=1: no sharing


def test_importance_and_top_k():
    st = make_state(4)
    score = module_importance(st)
    for m, (ka, kb) in lora_pairs(st).items():
        assert score[m] == pytest.approx(float(torch.linalg.matrix_norm(st[kb] @ st[ka])), rel=1e-6)
    assert top_count(0.5, 6) == 3 and top_count(1.0, 6) == 6 and top_count(0.01, 6) == 1 and top_count(9, 6) == 6
    for bad in (0, -1, 0.0, 1.5, True, "half"):
        with pytest.raises(ConfigError, match="top_k"):
            get_strategy("dofit", top_k=bad)
    with pytest.raises(ConfigError, match="proximal"):
        get_strategy("dofit", proximal=2)


def test_clients_receive_their_domain_adapter_and_absent_domains_keep_theirs():
    s = bound(PROFILES)
    g = s.init_global(make_state(0))
    one = make_state(0)
    assert sorted(s.domain_states(g)) == ["fin", "gen", "med"]
    down = s.downlink(g, client=2)
    assert down.keys() == one.keys() and tensor_bytes(down) == tensor_bytes(one)  # one adapter crosses the wire
    assert all(torch.equal(s.client_init(down, None, client=2)[k], down[k]) for k in down)  # Flower side
    new = s.aggregate(g, [make_state(5), make_state(6)], [1, 1], clients=[0, 2])
    after = s.domain_states(new)
    assert all(torch.equal(after["med"][k], one[k]) for k in one)  # no med client this round
    assert not torch.equal(after["fin"][next(iter(one))], one[next(iter(one))])
    assert all(torch.equal(s.downlink(new, client=4)[k], one[k]) for k in one)
    with pytest.raises(ValueError, match="clients="):
        s.aggregate(g, [make_state(5)], [1])
    with pytest.raises(ValueError, match="client"):
        s.client_init(g)


def test_evaluated_adapter_is_the_size_weighted_mean_of_the_domains():
    s = bound(PROFILES)
    states = {"fin": make_state(1), "gen": make_state(2), "med": make_state(3)}
    out = s.eval_state(s._join(states))
    for k in out:
        ref = (40 * states["fin"][k] + 40 * states["gen"][k] + 5 * states["med"][k]) / 85
        assert torch.allclose(out[k], ref, atol=1e-6)


def test_dofit_and_c2a_refuse_staged_plans():
    from types import SimpleNamespace

    from devft_lab.fl.simulation import Simulation

    plan = SimpleNamespace(stage_rounds=lambda: [1, 1])
    for name in ("dofit", "c2a", "flora"):
        s = get_strategy(name)
        assert s.single_stage
        with pytest.raises(ValueError, match="devft.enabled=false"):
            Simulation(plan, s, [[{"input_ids": [1], "labels": [1]}]], None, "unused")
    assert not get_strategy("fedsa-lora").single_stage


# --------------------------------------------------------------------------- in the runtime (tiny model)
def test_dofit_run_sends_one_domain_adapter_each_way_and_resumes_exactly(tmp_path, tiny_sim):
    from devft_lab.fl.simulation import final_state

    fedit = tiny_sim("fedit", "fed.strategy=fedit")
    dofit = tiny_sim("dofit", "fed.strategy=dofit")
    assert sorted(dofit.strategy.domains) == sorted(set(dofit.strategy.domain_of_client.values()))
    for a, b in zip(fedit.ledger.rows, dofit.ledger.rows):  # same clients, a FedIT-sized adapter each way
        assert a["extra"]["clients"] == b["extra"]["clients"]
        assert (a["uplink_bytes"], a["downlink_bytes"]) == (b["uplink_bytes"], b["downlink_bytes"])
    tiny_sim("cut", "fed.strategy=dofit", until=2)
    resumed = tiny_sim("cut", "fed.strategy=dofit", resume=True)
    a, b = final_state(dofit), final_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)  # it trained
