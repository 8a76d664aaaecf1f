"""Solutions to notebook 04's exercises (the federated stage schedule).

Run from ``notebooks/``: ``DEVFT_PROFILE=ci python -c "import solutions.nb04 as s; s.exercise_1()"``.
"""
from __future__ import annotations

import torch

from devft_lab.teach.profile import pick


def exercise_1():
    """How uneven can a split get? The skew of a Dirichlet(alpha) split of the pool, for alpha from
    0.01 to 1000: it falls as alpha grows, and alpha 1000 is even more even than an IID split (which
    draws clients at random, so its mixes carry sampling noise; a large alpha shares each task out in
    nearly equal parts)."""
    from devft_lab.data import load_examples
    from devft_lab.teach import schedule_view as sv

    cats = [e["category"] for e in load_examples(pick(ci="tiny", full="lab"))]
    n = pick(ci=8, full=20)
    alphas = (0.01, 0.1, 1.0, 10.0, 1000.0)
    skews = [sv.partition_view(cats, a, num_clients=n, seed=42)["skew"] for a in alphas]
    iid = sv.partitions_figure(cats, {"IID": ("iid", {})}, num_clients=n, seed=42)["skew"]["IID"]
    for a, s in zip(alphas, skews):
        print(f"alpha = {a:g}: skew {s:.3f}")
    print(f"IID: skew {iid:.3f}")
    assert skews[0] > skews[2] > skews[-1], "the skew falls as alpha grows"
    assert skews[-1] <= iid, "a very large alpha splits at least as evenly as a random IID split"
    return dict(zip(alphas, skews))


def copy_scaled(global_lora, groups, reps):
    """The ``copy-scaled`` rule: every member of group g takes representative g's A and B / m."""
    out = {i: {name: t.clone() for name, t in tensors.items()} for i, tensors in global_lora.items()}
    for g, members in enumerate(groups):
        for i in members:
            for name, t in reps[g].items():
                out[i][name] = t / len(members) if ".lora_B." in name else t.clone()
    return out


def exercise_2():
    """Another transfer rule, written like the notebook's ``copy_transfer``: ``copy-scaled`` equals the
    library's, and a group's summed update sum_i B_i A_i is then the representative's B A (``copy``
    gives m times it)."""
    from devft_lab.method.transfer import transfer_lora

    g = torch.Generator().manual_seed(0)
    L, groups = 6, [[0], [1, 2, 3], [4, 5]]
    names = ("q_proj.lora_A.weight", "q_proj.lora_B.weight")

    def lora():
        return {"q_proj.lora_A.weight": torch.randn(4, 16, generator=g),
                "q_proj.lora_B.weight": torch.randn(16, 4, generator=g)}

    before = {i: lora() for i in range(L)}
    reps = {k: lora() for k in range(len(groups))}
    mine = copy_scaled(before, groups, reps)
    lib = transfer_lora(before, groups, reps, "copy-scaled")
    assert all(torch.equal(mine[i][n], lib[i][n]) for i in range(L) for n in names), "copy-scaled matches the library"
    copied = transfer_lora(before, groups, reps, "copy")
    A, B = names
    for k, members in enumerate(groups):
        rep = reps[k][B] @ reps[k][A]
        scaled = sum(mine[i][B] @ mine[i][A] for i in members)
        full = sum(copied[i][B] @ copied[i][A] for i in members)
        assert torch.allclose(scaled, rep, atol=1e-5), "copy-scaled: the group applies the representative's update once"
        assert torch.allclose(full, len(members) * rep, atol=1e-4), "copy: the group applies it m times"
    print("copy-scaled equals the library's; a group of m layers applies B A once (copy: m times)")
    return mine


def exercise_3():
    """How many FedIT rounds cost the client FLOPs of DevFT's schedule? For the profile's model: the
    lab's schedule (4 stages, growth x2, 2/2/3/3 rounds) costs fewer FLOPs than ten full rounds and
    more than its own three full-model rounds; on SmolLM2 it matches 6 FedIT rounds."""
    from devft_lab.experiments.compute_matched import matched_rounds, model_shape, stage_flops_per_token
    from devft_lab.method.schedule import stage_capacities
    from devft_lab.runner.config import load_config
    from devft_lab.teach.profile import profile_model

    c = load_config("lab")
    counts = model_shape(profile_model(), c.lora.r, c.lora.target_modules)
    caps = stage_capacities(counts.num_layers, c.devft.stages, c.devft.growth)
    rounds = list(c.devft.rounds_per_stage)
    share = sum(r * stage_flops_per_token(counts, k) for k, r in zip(caps, rounds)) / (
        sum(rounds) * stage_flops_per_token(counts, counts.num_layers))
    n = matched_rounds(counts, caps, rounds)
    print(f"{profile_model()}: capacities {caps}, rounds {rounds}: {share:.2f} of ten FedIT rounds' FLOPs, "
          f"matched by {n} FedIT rounds")
    assert rounds[-1] <= n < sum(rounds), "more than the schedule's full-model rounds, fewer than all its rounds"
    if counts.num_layers == 30:
        assert n == 6, "SmolLM2's lab schedule matches six FedIT rounds"
    return n
