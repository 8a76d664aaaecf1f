"""Properties of C2A: the hypernetwork, the adapters it generates, what trains and what is sent."""
import pytest
import torch

from devft_lab.core.choices import ConfigError
from devft_lab.fl.accounting import tensor_bytes
from devft_lab.fl.c2a import PREFIX, generate, init_hypernetwork, lora_keys
from devft_lab.fl.strategies import STRATEGY_PARAMS, ClientProfile, get_strategy, is_lora_a, is_lora_b

KEY = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight"


def template(layers=3, r=4, d=32, out=(32, 8)):
    st = {}
    for i in range(layers):
        for m, o in zip(("q", "v"), out):
            st[KEY.format(i=i, m=m, ab="A")] = torch.zeros(r, d)
            st[KEY.format(i=i, m=m, ab="B")] = torch.zeros(o, r)
    return st


# clients 0 and 1 hold the same category shares; client 2 another
PROFILES = [ClientProfile({"add": 3, "copy": 1}), ClientProfile({"add": 6, "copy": 2}), ClientProfile({"copy": 4})]


def bound(profiles=PROFILES, embedding=None, **params):
    s = get_strategy("c2a", **params)
    s.bind_clients(profiles, embedding)
    return s


def trained_like(h, seed=1):
    """A hypernetwork whose B factors are no longer zero (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 if k.startswith(f"{PREFIX}B/") else v for k, v in h.items()}


def test_fresh_hypernetwork_generates_a_fresh_lora():
    t = template(layers=4, d=256)
    s = bound()
    h = s.init_global(t)
    lora = s.adapter(h, 0)
    assert lora.keys() == t.keys() and all(lora[k].shape == t[k].shape for k in t)
    assert all(float(lora[k].abs().max()) == 0 for k in t if is_lora_b(k))  # B = 0: the model is unchanged
    a = torch.cat([lora[k].flatten() for k in t if is_lora_a(k)])
    assert 0.3 < float(a.var()) * 3 * 256 < 3  # PEFT's A init has variance 1 / (3 in)
    assert STRATEGY_PARAMS["c2a"] == ("embed_dim", "hidden", "seed")
    assert all(torch.equal(h[k], s.init_global(t)[k]) for k in h)  # seeded


def test_generated_adapter_is_the_factorised_formula():
    s = bound()
    h = trained_like(s.init_global(template()))
    p, x = s.embedding_inputs(2)
    assert x is None and torch.allclose(p, torch.tensor([0.0, 1.0]))
    lora = s.adapter(h, 2)
    layer, pattern = 1, "base_model.model.model.layers.*.self_attn.v_proj"
    t = h[f"{PREFIX}layer"][layer] + p @ h[f"{PREFIX}label"]
    a = torch.einsum("d,drc,ci->ri", t, h[f"{PREFIX}lower_A"], h[f"{PREFIX}A/{pattern}"])
    b = torch.einsum("oc,d,drc->or", h[f"{PREFIX}B/{pattern}"], t, h[f"{PREFIX}lower_B"])
    assert torch.allclose(lora[KEY.format(i=1, m="v", ab="A")], a, atol=1e-6)
    assert torch.allclose(lora[KEY.format(i=1, m="v", ab="B")], b, atol=1e-6)


def test_adapter_changes_with_the_client_embedding_and_equal_embeddings_share_it():
    s = bound()
    h = trained_like(s.init_global(template()))
    a0, a1, a2 = (s.adapter(h, c) for c in range(3))
    assert all(torch.equal(a0[k], a1[k]) for k in a0)  # same category shares -> same adapter
    assert all(not torch.allclose(a0[k], a2[k]) for k in a0)  # other shares -> every tensor differs
    pool = s.adapter(h, None)  # the evaluated adapter: the pool's shares (9 add, 7 copy of 16)
    assert torch.allclose(s.embedding_inputs(None)[0], torch.tensor([9 / 16, 7 / 16]))
    assert all(torch.equal(s.eval_state(h)[k], pool[k]) for k in pool)
    # with contexts: same shares but other tokens -> another adapter; the same tokens -> the same one
    emb = torch.nn.Embedding(50, 32)
    ex = [[{"input_ids": [1, 2, 3]}], [{"input_ids": [1, 2, 3]}], [{"input_ids": [7, 8, 9, 10]}]]
    same = [ClientProfile({"add": 1}, ex[i]) for i in range(3)]
    s = bound(same, emb)
    h = trained_like(s.init_global(template()))
    assert f"{PREFIX}context" in h and h[f"{PREFIX}context"].shape == (32, 8)
    a0, a1, a2 = (s.adapter(h, c) for c in range(3))
    assert all(torch.equal(a0[k], a1[k]) for k in a0) and all(not torch.allclose(a0[k], a2[k]) for k in a0)


def test_the_hypernetwork_is_what_is_sent_and_averaged():
    s = bound()
    h = s.init_global(template())
    c1, c2 = trained_like(h, 1), trained_like(h, 2)
    assert s.uplink(c1).keys() == s.downlink(h).keys() == h.keys()
    assert tensor_bytes(s.uplink(c1)) == sum(v.numel() * 4 for v in h.values())
    assert s.persist(c1) == {}
    out = s.aggregate(h, [c1, c2], [1, 3], clients=[0, 2])
    assert all(torch.allclose(out[k], 0.25 * c1[k] + 0.75 * c2[k]) for k in h)
    # far smaller than the adapters it stands for on a wide model
    wide = template(layers=30, r=16, d=576, out=(576, 192))
    assert tensor_bytes(init_hypernetwork(wide, 4, 576)) < tensor_bytes(wide) / 3


def test_c2a_needs_profiles_and_positive_sizes():
    with pytest.raises(ValueError, match="bind_clients"):
        get_strategy("c2a").init_global(template())
    with pytest.raises(ConfigError, match="embed_dim"):
        get_strategy("c2a", embed_dim=0)
    with pytest.raises(ConfigError, match="hidden"):
        get_strategy("c2a", hidden=2.5)


def test_local_step_trains_the_hypernetwork_through_the_generated_lora():
    """At a fresh hypernetwork only V_B has a gradient (B = V_B (t U_B)^T = 0 blocks every other
    path, as a fresh LoRA's B = 0 leaves only B with one); after the round the model holds the
    client's generated adapter and no parametrization."""
    peft = pytest.importorskip("peft")
    from devft_lab.core.models import tiny_model
    from devft_lab.core.train import Compute
    from devft_lab.fl.client import LocalTraining, client_update, get_lora_state

    model, tok = tiny_model("llama", num_layers=2)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    data = [{"input_ids": tok(w)["input_ids"], "labels": tok(w)["input_ids"]} for w in ("abc", "hello", "xyz", "ok")]
    s = bound([ClientProfile({"a": 4}, data), ClientProfile({"b": 1}, data[:1])], pm.get_input_embeddings())
    h0 = s.init_global(get_lora_state(pm))
    assert {k for k, *_ in lora_keys(h0)} == set(get_lora_state(pm))
    training = LocalTraining(steps=1, batch_size=2, lr=1e-2, compute=Compute(packing=False))
    res = client_update(pm, h0, data, s, training, client=0, round_idx=0, seed=0)
    changed = {k for k in h0 if not torch.equal(res.upload[k], h0[k])}
    assert changed == {k for k in h0 if k.startswith(f"{PREFIX}B/")}
    assert not any("parametrizations" in n for n, _ in pm.named_parameters())
    assert not any(p.requires_grad for n, p in pm.named_parameters())
    lora, want = get_lora_state(pm), s.adapter(res.upload, 0)
    assert all(torch.allclose(lora[k], want[k], atol=1e-6) for k in want)
    assert any(float(lora[k].abs().sum()) > 0 for k in lora if is_lora_b(k))  # the generated B moved
    more = client_update(pm, res.upload, data, s,
                         LocalTraining(steps=2, batch_size=2, lr=1e-2, compute=Compute(packing=False)),
                         client=0, round_idx=1, seed=0)
    assert {k for k in h0 if not torch.equal(more.upload[k], res.upload[k])} == set(h0)  # now everything trains


def test_generated_adapter_keeps_the_hypernetworks_dtype():
    s = bound()
    h = {k: v.to(torch.bfloat16) for k, v in trained_like(s.init_global(template())).items()}
    lora = generate(h, *s.embedding_inputs(0))
    assert all(v.dtype == torch.bfloat16 for v in lora.values())


def test_c2a_run_sends_the_hypernetwork_both_ways_and_resumes_exactly(tmp_path, tiny_sim):
    from devft_lab.fl.simulation import final_state

    full = tiny_sim("c2a", "fed.strategy=c2a")
    hyper = full.state.global_state
    assert all(k.startswith(PREFIX) for k in hyper)
    for row in full.ledger.rows:  # every sampled client: the whole hypernetwork down and up
        n = len(row["extra"]["clients"])
        assert row["uplink_bytes"] == row["downlink_bytes"] == n * tensor_bytes(hyper)
    final = final_state(full)
    assert all(torch.equal(final[k], v) for k, v in full.strategy.adapter(hyper).items())
    tiny_sim("cut", "fed.strategy=c2a", until=2)
    resumed = final_state(tiny_sim("cut", "fed.strategy=c2a", resume=True))
    assert final.keys() == resumed.keys() and all(torch.equal(final[k], resumed[k]) for k in final)
    assert any(float(v.abs().sum()) > 0 for k, v in final.items() if is_lora_b(k))  # it trained
