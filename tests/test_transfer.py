"""Knowledge-transfer rules (devft.transfer): the properties each rule states, on plain tensors."""
import pytest
import torch

from devft_lab.method.transfer import TRANSFER_RULES, transfer_lora

A, B = "self_attn.q_proj.lora_A.weight", "self_attn.q_proj.lora_B.weight"
R, D = 3, 5


def _layer(gen):
    return {A: torch.randn(R, D, generator=gen), B: torch.randn(D, R, generator=gen)}


def _setup(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    L = sum(len(g) for g in groups)
    lora = {i: _layer(gen) for i in range(L)}
    start = {g: _layer(gen) for g in range(len(groups))}
    reps = {g: _layer(gen) for g in range(len(groups))}
    anchors = [g[0] for g in groups]
    return lora, start, reps, anchors


def _run(rule, lora, groups, reps, anchors, start):
    return transfer_lora(lora, groups, reps, rule, anchors=anchors, start_lora=start)


def _clone(d):
    return {k: {n: t.clone() for n, t in v.items()} for k, v in d.items()}


@pytest.mark.parametrize("rule", TRANSFER_RULES)
def test_singleton_groups_every_rule_is_copy_when_the_rep_started_from_its_layer(rule):
    groups = [[0], [1], [2]]
    lora, _, reps, anchors = _setup(groups)
    start = {g: dict(lora[g]) for g in range(3)}  # a singleton's representative starts as its layer
    out = _run(rule, lora, groups, reps, anchors, start)
    ref = transfer_lora(lora, groups, reps, "copy")
    for i in range(3):
        for n in (A, B):
            assert torch.allclose(out[i][n], ref[i][n], atol=1e-6) and torch.allclose(out[i][n], reps[i][n], atol=1e-6)


def test_copy_writes_the_same_lora_into_every_member():
    groups = [[0, 1, 2], [3, 4]]
    lora, start, reps, anchors = _setup(groups)
    out = _run("copy", lora, groups, reps, anchors, start)
    for g, members in enumerate(groups):
        for i in members:
            assert torch.equal(out[i][A], reps[g][A]) and torch.equal(out[i][B], reps[g][B])


def test_copy_scaled_group_sum_of_updates_is_the_reps_update():
    groups = [[0, 1, 2], [3, 4], [5]]
    lora, start, reps, anchors = _setup(groups)
    out = _run("copy-scaled", lora, groups, reps, anchors, start)
    for g, members in enumerate(groups):
        total = sum(out[i][B] @ out[i][A] for i in members)
        assert torch.allclose(total, reps[g][B] @ reps[g][A], atol=1e-5)
        assert all(torch.equal(out[i][A], reps[g][A]) for i in members)


def test_anchor_only_leaves_non_anchors_untouched():
    groups = [[0, 1, 2], [3, 4]]
    lora, start, reps, _ = _setup(groups)
    anchors = [1, 3]  # e.g. anchor rule "middle" for the first group
    out = _run("anchor-only", lora, groups, reps, anchors, start)
    for g, members in enumerate(groups):
        for i in members:
            want = reps[g] if i == anchors[g] else lora[i]
            assert torch.equal(out[i][A], want[A]) and torch.equal(out[i][B], want[B])


def test_increment_equals_copy_for_members_that_started_at_the_reps_start():
    groups = [[0, 1, 2], [3, 4]]
    lora, start, reps, anchors = _setup(groups)
    for g, members in enumerate(groups):
        for i in members:
            lora[i] = {n: t.clone() for n, t in start[g].items()}
    inc = _run("increment", lora, groups, reps, anchors, start)
    cp = _run("copy", lora, groups, reps, anchors, start)
    assert all(torch.allclose(inc[i][n], cp[i][n], atol=1e-6) for i in lora for n in (A, B))


def test_increment_keeps_members_differences_and_its_product_error_is_the_cross_term():
    groups = [[0, 1, 2]]
    lora, start, reps, anchors = _setup(groups)
    out = _run("increment", lora, groups, reps, anchors, start)
    dA, dB = reps[0][A] - start[0][A], reps[0][B] - start[0][B]
    for i in (1, 2):
        for n in (A, B):
            assert torch.allclose(out[i][n] - out[0][n], lora[i][n] - lora[0][n], atol=1e-5)
    for i in range(3):
        change = out[i][B] @ out[i][A] - lora[i][B] @ lora[i][A]
        rep_change = reps[0][B] @ reps[0][A] - start[0][B] @ start[0][A]
        cross = (lora[i][B] - start[0][B]) @ dA + dB @ (lora[i][A] - start[0][A])
        assert torch.allclose(change, rep_change + cross, atol=1e-4)


@pytest.mark.parametrize("rule", TRANSFER_RULES)
def test_inputs_are_not_modified(rule):
    groups = [[0, 1, 2], [3, 4]]
    lora, start, reps, anchors = _setup(groups)
    before = [_clone(lora), _clone(start), _clone(reps)]
    out = _run(rule, lora, groups, reps, anchors, start)
    for saved, now in zip(before, (lora, start, reps)):
        assert all(torch.equal(saved[k][n], now[k][n]) for k in saved for n in saved[k])
    out[0][A].add_(1.0)  # fresh tensors: writing the result changes no input
    assert all(not torch.equal(out[0][A], d[k][A]) for d in (lora, start, reps) for k in d)


def test_unknown_rule_and_missing_inputs_say_what_to_give():
    groups = [[0, 1], [2]]
    lora, start, reps, anchors = _setup(groups)
    with pytest.raises(ValueError, match="copy, copy-scaled, anchor-only, increment"):
        transfer_lora(lora, groups, reps, "average")
    with pytest.raises(ValueError, match="needs start_lora"):
        transfer_lora(lora, groups, reps, "increment")
    with pytest.raises(ValueError, match="one anchor per group"):
        transfer_lora(lora, groups, reps, "anchor-only", anchors=[1, 0])


def test_a_representative_with_a_subset_of_tensors_transfers_only_those():
    groups = [[0, 1], [2]]
    lora, start, reps, anchors = _setup(groups)
    only_b = {g: {B: reps[g][B]} for g in reps}
    out = transfer_lora(lora, groups, only_b, "copy")
    assert torch.equal(out[1][B], reps[0][B]) and torch.equal(out[1][A], lora[1][A])


@pytest.mark.parametrize("rule", TRANSFER_RULES)
def test_every_rule_is_registered_under_its_name_and_a_client_holding_the_aggregate_keeps_nothing_of_its_own(rule):
    from devft_lab.method.transfer import transfer_rule

    r = transfer_rule(rule)
    assert r is TRANSFER_RULES[rule] and r.name == rule
    groups = [[0, 1, 2], [3, 4], [5]]
    lora, start, reps, anchors = _setup(groups)
    after = r.transfer(lora, groups, reps, anchors=anchors, start_lora=start)
    kept = r.transfer_kept(after, groups, reps, anchors=anchors, aggregate=reps)
    assert all(torch.equal(kept[i][n], after[i][n]) for i in after for n in (A, B))
    moved = r.transfer_kept(after, groups, {g: {n: t + 1.0 for n, t in d.items()} for g, d in reps.items()},
                            anchors=anchors, aggregate=reps)
    assert any(not torch.equal(moved[i][B], after[i][B]) for i in after)  # a client's own deviation does move


def test_increment_moves_a_kept_client_by_its_deviation_from_the_aggregate():
    from devft_lab.method.transfer import transfer_rule

    groups = [[0, 1, 2], [3, 4]]
    lora, start, reps, anchors = _setup(groups)
    inc = transfer_rule("increment")
    after = inc.transfer(lora, groups, reps, start_lora=start)
    client = {g: {n: t + 0.5 * (g + 1) for n, t in d.items()} for g, d in reps.items()}
    out = inc.transfer_kept(after, groups, client, aggregate=reps)
    for g, members in enumerate(groups):
        for i in members:
            for n in (A, B):
                assert torch.allclose(out[i][n] - after[i][n], client[g][n] - reps[g][n], atol=1e-6)
    with pytest.raises(ValueError, match="aggregate"):
        inc.transfer_kept(after, groups, client)
