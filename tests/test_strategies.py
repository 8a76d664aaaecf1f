"""Properties of the federated LoRA strategies (pure tensor tests, no model)."""
import pytest
import torch

from devft_lab.runner.config import STRATEGY_PARAMS, ConfigError
from devft_lab.fl import strategies as S
from devft_lab.fl.strategies import (
    STRATEGIES, canonical_key, get_strategy, is_lora_a, is_lora_b, lora_pairs, merge_delta,
    normalise_weights, proximal_term, stacked_delta,
)

PREFIX = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight"


def make_state(seed=0, layers=2, r=4, d=8, out=(8, 4), dtype=torch.float32):
    """A LoRA state with real PEFT key names (q_proj: d->8, v_proj: d->4)."""
    g = torch.Generator().manual_seed(seed)
    st = {}
    for i in range(layers):
        for m, o in zip(("q", "v"), out):
            st[PREFIX.format(i=i, m=m, ab="A")] = torch.randn(r, d, generator=g).to(dtype)
            st[PREFIX.format(i=i, m=m, ab="B")] = torch.randn(o, r, generator=g).to(dtype)
    return st


def test_key_helpers():
    k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert canonical_key(k) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert is_lora_a(k) and not is_lora_b(k)
    assert S.module_name(k) == "base_model.model.model.layers.0.self_attn.q_proj"
    assert len(lora_pairs(make_state())) == 4


def test_parameter_table_is_derived_from_the_classes():
    assert STRATEGY_PARAMS == {"fedit": (), "ffa-lora": ("a_seed",), "fedsa-lora": ("eval_mode",),
                               "flora": ("a_seed",), "fedprox": ("mu",), "dofit": ("top_k", "proximal"),
                               "c2a": ("embed_dim", "hidden", "seed")}
    assert STRATEGY_PARAMS is S.STRATEGY_PARAMS  # runner.config re-exports fl's table, no copy
    assert get_strategy("FedSA").name == "fedsa-lora"
    assert get_strategy("ffa_lora").name == "ffa-lora"
    with pytest.raises(ConfigError, match="fedsa-lora"):
        get_strategy("fedsaa")
    with pytest.raises(ConfigError, match="mu"):
        get_strategy("fedit", mu=0.1)
    assert get_strategy("fedprox", mu=0.5).mu == 0.5


def test_weights_normalise():
    assert normalise_weights([1, 3]) == [0.25, 0.75]
    assert abs(sum(normalise_weights([7, 11, 13])) - 1) < 1e-12
    for bad in ([], [0, 0], [-1, 2], [float("nan")]):
        with pytest.raises(ValueError):
            normalise_weights(bad)
    with pytest.raises(ValueError):
        normalise_weights([1, 2], n=3)
    # scaling all weights changes nothing
    s = get_strategy("fedit")
    g, c = make_state(0), [make_state(1), make_state(2)]
    a, b = s.aggregate(g, c, [1, 3]), s.aggregate(g, c, [10, 30])
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["fedit", "fedprox", "ffa-lora", "fedsa-lora"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fedavg_of_identical_clients_is_identity(name, dtype):
    s = get_strategy(name)
    g = make_state(0, dtype=dtype)
    client = s.client_init(g)
    out = s.aggregate(g, [client, client, client], [5, 1, 3])
    for k in g:
        assert out[k].dtype == dtype
        assert torch.equal(out[k], g[k]), k


def test_fedit_is_weighted_mean():
    s = get_strategy("fedit")
    g, c1, c2 = make_state(0), make_state(1), make_state(2)
    out = s.aggregate(g, [c1, c2], [1, 3])
    for k in g:
        torch.testing.assert_close(out[k], 0.25 * c1[k] + 0.75 * c2[k])


def test_ffa_lora_never_changes_a_and_trains_only_b():
    s = get_strategy("ffa-lora", a_seed=3)
    g = s.init_global(make_state(0))
    assert all(torch.count_nonzero(v) == 0 for k, v in g.items() if is_lora_b(k))
    again = get_strategy("ffa-lora", a_seed=3).init_global(make_state(9))
    assert all(torch.equal(g[k], again[k]) for k in g)  # A rebuilt from the seed alone
    clients = [make_state(i) for i in (1, 2, 3)]  # clients that (wrongly) changed A too
    out = s.aggregate(g, clients, [1, 1, 2])
    for k in g:
        if is_lora_a(k):
            assert torch.equal(out[k], g[k])
            assert not s.trainable(k)
        else:
            assert s.trainable(k)
    assert all(is_lora_b(k) for k in s.uplink_keys(g)) and all(is_lora_b(k) for k in s.downlink_keys(g))
    # exact: mean(B_k) A == mean(B_k A)
    B = [{k: v for k, v in c.items() if is_lora_b(k)} for c in clients]
    for mod, (ka, kb) in lora_pairs(g).items():
        want = sum(p * (b[kb] @ g[ka]) for p, b in zip([0.25, 0.25, 0.5], B))
        torch.testing.assert_close(out[kb] @ out[ka], want, rtol=1e-5, atol=1e-5)


def test_fedsa_lora_keeps_b_local():
    s = get_strategy("fedsa-lora")
    g = make_state(0)
    up = s.uplink_keys(g)
    assert up and not any("lora_B" in k for k in up)
    assert not any("lora_B" in k for k in s.downlink_keys(g))
    assert all(is_lora_b(k) for k in s.local_keys(g))
    c1, c2 = make_state(1), make_state(2)
    out = s.aggregate(g, [c1, c2], [1, 1])
    for k in g:
        if is_lora_b(k):
            assert torch.equal(out[k], g[k])  # the server never sees a trained B
        else:
            torch.testing.assert_close(out[k], 0.5 * (c1[k] + c2[k]))
    # client init: global A + the client's own B
    mine = s.persist(c1)
    start = s.client_init(out, mine)
    for k in g:
        assert torch.equal(start[k], c1[k] if is_lora_b(k) else out[k])
    ev = s.eval_state(out, [mine, s.persist(c2)], [1, 3])
    for k in g:
        if is_lora_b(k):
            torch.testing.assert_close(ev[k], 0.25 * c1[k] + 0.75 * c2[k])
    assert len(s.eval_states(out, [mine])) == 1


@pytest.mark.parametrize("ranks", [(4, 4, 4), (2, 4, 8)])
def test_flora_stacking_is_exact(ranks):
    s = get_strategy("flora")
    g = make_state(0, r=ranks[0])
    clients = [make_state(10 + i, r=r) for i, r in enumerate(ranks)]
    w = [3, 1, 2]
    p = normalise_weights(w)
    stacked = s.aggregate(g, clients, w)
    dense = s.aggregate_delta(clients, w)
    sd = stacked_delta(stacked)
    for mod, (ka, kb) in lora_pairs(g).items():
        want = sum(pk * (c[kb].double() @ c[ka].double()) for pk, c in zip(p, clients)).float()
        assert stacked[ka].shape[0] == sum(ranks)
        torch.testing.assert_close(sd[mod], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dense[mod], want, rtol=1e-5, atol=1e-5)
    # downlink counts the stacked size
    from devft_lab.fl.accounting import tensor_bytes
    assert tensor_bytes(s.downlink(stacked)) == sum(tensor_bytes(c) for c in clients)


def test_flora_merge_into_base_weights():
    s = get_strategy("flora")
    clients = [make_state(1), make_state(2)]
    base = {}
    for mod in lora_pairs(clients[0]):
        stripped = mod[len("base_model.model."):]
        out = 8 if "q_proj" in mod else 4
        base[f"{stripped}.weight"] = torch.zeros(out, 8)
    delta = s.aggregate_delta(clients, [1, 1])
    merged = merge_delta(base, delta, scaling=2.0)
    for mod, d in delta.items():
        torch.testing.assert_close(merged[f"{mod[len('base_model.model.'):]}.weight"], 2.0 * d)
    merge_delta(base, delta, scaling=1.0, inplace=True)
    assert any(torch.count_nonzero(v) for v in base.values())
    fresh = s.fresh_adapter(clients[0], round_idx=1)
    assert all(torch.count_nonzero(v) == 0 for k, v in fresh.items() if is_lora_b(k))
    assert not torch.equal(fresh[next(iter(fresh))], s.fresh_adapter(clients[0], 2)[next(iter(fresh))])


def test_fedprox_proximal_term():
    g = make_state(0)
    params = {k.replace("lora_A.weight", "lora_A.default.weight"): v.clone().requires_grad_(True)
              for k, v in g.items()}
    assert proximal_term(params, g, mu=0.1).item() == 0.0
    k0 = next(iter(params))
    with torch.no_grad():
        params[k0] += 1.0
    t = get_strategy("fedprox", mu=0.1).local_penalty(params, g)
    assert t.item() == pytest.approx(0.05 * params[k0].numel(), rel=1e-5)
    t.backward()
    assert torch.allclose(params[k0].grad, torch.full_like(params[k0], 0.1))  # d/dw mu/2 ||w - g||^2 = mu (w - g)
    with pytest.raises(ConfigError):
        get_strategy("fedprox", mu=-1)


def test_aggregate_uses_only_uplinked_keys():
    s = get_strategy("fedsa-lora")
    g = make_state(0)
    bad = make_state(1)
    for k in bad:
        if is_lora_b(k):
            bad[k] = torch.full_like(bad[k], float("nan"))
    out = s.aggregate(g, [bad], [1])
    assert not any(torch.isnan(v).any() for v in out.values())


def test_peft_key_names_roundtrip():
    """The strategies understand the keys real PEFT produces (peft get_peft_model_state_dict)."""
    peft = pytest.importorskip("peft")
    from devft_lab.core.models import tiny_model

    model, _ = tiny_model("llama", num_layers=2)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    st = peft.get_peft_model_state_dict(pm)
    assert len(lora_pairs(st)) == 4
    named = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    assert {canonical_key(n) for n in named} == set(st)
    delta = stacked_delta(st)
    merged = merge_delta(pm.state_dict(), delta)
    assert set(merged) == set(pm.state_dict())


def test_base_class_hooks_are_no_ops_that_strategies_override():
    template = make_state(0)
    for name in ("fedit", "fedsa-lora", "flora"):
        s = get_strategy(name)
        start = s.init_global(template)
        assert all(torch.equal(start[k], template[k]) for k in template)
        assert s.local_penalty(template, template) is None
    assert [n for n in STRATEGIES if get_strategy(n).requires_merge] == ["flora"]
    ffa = get_strategy("ffa-lora", a_seed=1).init_global(template)
    a = [k for k in template if is_lora_a(k)]
    assert not torch.equal(ffa[a[0]], template[a[0]])  # A redrawn from the shared seed
    moved = {k: v + 1.0 for k, v in template.items()}
    expected = 0.5 * 0.2 * sum(float(v.numel()) for v in template.values())  # mu/2 * sum (1)^2
    assert float(get_strategy("fedprox", mu=0.2).local_penalty(moved, template)) == pytest.approx(expected)


def test_stage_rules_shared_by_simulation_and_flower():
    from devft_lab.fl.stages import StageModel, stage_eval_state, stage_start_state

    template = make_state(0)
    ffa = get_strategy("ffa-lora", a_seed=2)
    first = stage_start_state(ffa, StageModel(0, None, template, 1))
    later = stage_start_state(ffa, StageModel(1, None, template, 1))
    a = next(k for k in template if is_lora_a(k))
    assert torch.equal(first[a], ffa.init_global(template)[a])  # the shared A, drawn at stage 1 only
    assert torch.equal(later[a], template[a])  # later stages keep the transferred A
    fedsa = get_strategy("fedsa-lora")
    bs = [k for k in template if is_lora_b(k)]
    kept = {0: {b: torch.ones_like(template[b]) for b in bs}, 1: {b: 4 * torch.ones_like(template[b]) for b in bs},
            2: {}}
    out = stage_eval_state(fedsa, template, kept, {0: 3, 1: 1, 2: 50})  # client 2 kept nothing
    assert all(torch.allclose(out[b], torch.full_like(template[b], (3 * 1 + 1 * 4) / 4)) for b in bs)
    assert torch.equal(out[a], template[a])  # A is the global one
    assert all(torch.equal(stage_eval_state(fedsa, template, {}, {})[b], template[b]) for b in bs)
