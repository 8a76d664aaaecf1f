"""The Trainer + PEFT reference round and devft_lab's round (experiments.trainer_peer), on tiny-llama."""
import pytest
import torch

from devft_lab.experiments.trainer_peer import fedavg, lab_examples, ours_round, split_clients, trainer_round
from devft_lab.fl.strategies import get_strategy

SETTINGS = dict(clients=2, steps=2, batch_size=4, seq_len=64, lr=1e-3, r=4, alpha=8, seed=0)


@pytest.fixture(scope="module")
def rounds():
    torch.set_num_threads(1)
    ex = lab_examples(16)
    return {f.__name__: f("tiny-llama", ex, **SETTINGS, repeats=2) for f in (trainer_round, ours_round)}


def test_same_keys_and_shapes_on_both_sides(rounds):
    t, o = rounds["trainer_round"]["state"], rounds["ours_round"]["state"]
    assert t.keys() == o.keys() and len(t) > 0
    assert all(t[k].shape == o[k].shape for k in t)
    # both start from the same adapter (same seed, same PEFT init)
    ti, oi = rounds["trainer_round"]["init_state"], rounds["ours_round"]["init_state"]
    assert all(torch.equal(ti[k], oi[k]) for k in ti)


@pytest.mark.parametrize("side", ["trainer_round", "ours_round"])
def test_training_moves_lora_b_off_zero(rounds, side):
    r = rounds[side]
    b_keys = [k for k in r["state"] if "lora_B" in k]
    assert b_keys
    assert all(float(r["init_state"][k].abs().max()) == 0.0 for k in b_keys)
    assert all(float(r["state"][k].abs().max()) > 0.0 for k in b_keys)
    assert r["round_s"] > 0
    assert len(r["rounds_s"]) == 2 and r["round_s"] == min(r["rounds_s"])  # the best of the timed rounds


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight": torch.randn(3, 5, generator=g)
            for i in range(2) for ab in "AB"}


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_of_identical_clients_is_that_client(seed):
    s = _random_state(seed)
    g = torch.Generator().manual_seed(100 + seed)
    w = (torch.rand(2, generator=g) * 10 + 0.1).tolist()
    for avg in (fedavg([s, s], w), get_strategy("fedit").aggregate(s, [s, s], w)):
        assert avg.keys() == s.keys()
        assert all(torch.allclose(avg[k], s[k], atol=1e-6) for k in s)


def test_fedavg_is_sample_weighted():
    a, b = _random_state(1), _random_state(2)
    assert all(torch.equal(fedavg([a, b], [1, 0])[k], a[k]) for k in a)
    mid = fedavg([a, b], [3, 1])
    assert all(torch.allclose(mid[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("n,k", [(16, 2), (17, 3), (5, 5)])
def test_split_clients_covers_every_example_once(n, k):
    parts = split_clients(list(range(n)), k)
    assert len(parts) == k and sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_compare_runs_the_sides_in_turn_and_keeps_each_sides_best_round(monkeypatch):
    import json
    import subprocess
    from types import SimpleNamespace

    from devft_lab.experiments import trainer_peer

    order, fake_s = [], iter(range(1, 100))

    def fake_run(cmd, **kw):  # a child process: the side it was asked for, made-up timings
        side, settings = cmd[cmd.index("--child") + 1], json.loads(cmd[cmd.index("--settings") + 1])
        order.append((side, settings["dtype"], settings.get("compile", False)))
        t = float(next(fake_s))
        line = {"side": side, "round_s": t, "rounds_s": [t], "warmup_s": 10 * t, "peak_rss_mb": 100.0 + t,
                "threads": 1, "attention": "sdpa"}
        return SimpleNamespace(returncode=0, stdout=json.dumps(line) + "\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = trainer_peer.compare("tiny-llama", threads=1, passes=3, dtype="float32")
    sides = len(order) // 3
    assert len(order) == 3 * sides and order[:sides] == order[sides:2 * sides] == order[2 * sides:]  # in turn
    assert out["trainer_rounds_s"] == [1.0, 1.0 + sides, 1.0 + 2 * sides]  # every pass's round, in order
    assert out["trainer_round_s"] == 1.0 and out["ours_round_s"] == 2.0  # the best of each side's
    assert out["trainer_warmup_s"] == 10.0  # the first pass's warm-up
    assert out["trainer_peak_rss_mb"] == 101.0 + 2 * sides  # the highest of its processes
    assert out["ratio"] == 0.5 and out["passes"] == 3
    with pytest.raises(ValueError, match="passes"):
        trainer_peer.compare("tiny-llama", passes=0)
