"""devft_lab.teach.zoo: the FedAvg gap of LoRA factors and the strategies side by side (notebook 05)."""
import math

import pytest
import torch

from devft_lab.teach import zoo
from devft_lab.fl.strategies import get_strategy


def test_gap_is_zero_for_identical_clients():
    states = zoo.synthetic_clients(num_clients=5, heterogeneity=0.0, seed=3)
    assert zoo.aggregation_gap(states) < 1e-12  # 0 up to float64 rounding of the weighted sums
    assert zoo.aggregation_gap(states, relative=True) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_gap_grows_with_heterogeneity_quadratically(seed):
    hs = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]
    gaps = zoo.gap_curve(hs, num_clients=4, rank=3, seed=seed)["gap"]
    assert gaps[0] < 1e-12
    assert all(a < b for a, b in zip(gaps, gaps[1:]))
    # same client directions, scaled by h: the gap is h^2 times a constant (eq. 1)
    for h, g in zip(hs[1:], gaps[1:]):
        assert g == pytest.approx(gaps[-1] * (h / hs[-1]) ** 2, rel=1e-9)


def test_gap_equals_weighted_covariance_of_the_factors():
    states = zoo.synthetic_clients(num_clients=3, heterogeneity=0.7, rank=2, seed=5)
    w = [1.0, 2.0, 5.0]
    ideal, avg, cov = zoo.ideal_delta(states, w), zoo.fedavg_delta(states, w), zoo.covariance_delta(states, w)
    for m in ideal:
        torch.testing.assert_close(ideal[m] - avg[m], cov[m], rtol=1e-10, atol=1e-12)
    assert zoo.aggregation_gap(states, w) > 0


def test_gap_vanishes_when_clients_share_a_or_b():
    assert zoo.aggregation_gap(zoo.synthetic_clients(4, 0.9, shared_a=True)) < 1e-12
    assert zoo.aggregation_gap(zoo.synthetic_clients(4, 0.9, shared_b=True)) < 1e-12
    assert zoo.aggregation_gap(zoo.synthetic_clients(1, 0.9)) < 1e-12  # one client: nothing to average


def test_ffa_lora_aggregate_is_exact_and_fedit_is_not():
    template = zoo.synthetic_clients(1, 0.0)[0]
    w = [3.0, 1.0, 4.0]
    for name, exact in (("ffa-lora", True), ("flora", True), ("fedit", False), ("fedsa-lora", False)):
        s = get_strategy(name)
        start = zoo.start_state(s, template)
        clients = [zoo.local_update(s, start, 0.5, seed=c) for c in range(3)]
        err = zoo.zoo_row(s, start, clients, w)["relative error of ΣpBA"]
        if exact:
            assert err < 1e-6, name
        else:
            assert err > 1e-3, name


def test_ffa_lora_trains_and_sends_only_b():
    s = get_strategy("ffa-lora")
    template = zoo.synthetic_clients(1, 0.0)[0]
    start = zoo.start_state(s, template)
    client = zoo.local_update(s, start, 1.0, seed=0)
    for k in start:
        same = torch.equal(client[k], start[k])
        assert same == ("lora_A" in k)
    row = zoo.zoo_row(s, start, [client, zoo.local_update(s, start, 1.0, seed=1)], [1, 1])
    assert row["trains"] == "B" and row["sends up"] == "B"


def test_synthetic_zoo_rows():
    rows = {r["strategy"]: r for r in zoo.synthetic_zoo(num_clients=4)}
    assert set(rows) == set(zoo.ZOO)
    assert rows["flora"]["rank after aggregation"] == 4 * rows["fedit"]["rank after aggregation"]
    assert rows["ffa-lora"]["uplink / client (KB)"] == pytest.approx(rows["fedit"]["uplink / client (KB)"] / 2)
    assert rows["fedsa-lora"]["sends up"] == "A"
    for r in rows.values():
        assert (r["relative error of ΣpBA"] < 1e-6) == r["claims exact"]
    assert "strategy" in zoo.table_text(list(rows.values())).splitlines()[0]


def test_gap_view_widget_callback():
    v = zoo.gap_view(0.4, num_clients=3, rank=2, points=5)
    assert v["gap"] > 0 and 0 < v["relative"] < math.inf
    assert v["ffa_gap"] < 1e-12
    assert len(v["curve"]["gap"]) == 5 and v["curve"]["gap"][0] < 1e-12
    assert v["figure"].axes
    assert zoo.gap_view(0.0, points=3)["gap"] < 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError):
        zoo.synthetic_clients(0, 0.5)
    with pytest.raises(ValueError):
        zoo.synthetic_clients(2, -1.0)
    with pytest.raises(ValueError):
        zoo.aggregation_gap(zoo.synthetic_clients(2, 0.5), weights=[1.0])


def test_real_round_on_tiny_model():
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import build

    cfg = load_config("tiny", ["devft.enabled=false", "train.local_steps=1"])
    parts = build(cfg, progress=False)
    for name in ("fedit", "ffa-lora"):
        s = get_strategy(name)
        start, trained, w = zoo.real_round(parts, s, clients=[0, 1])
        assert len(trained) == 2 and all(x > 0 for x in w)
        assert set(trained[0]) == set(start)
        row = zoo.zoo_row(s, start, trained, w)
        if name == "ffa-lora":
            assert row["relative error of ΣpBA"] < 1e-6
        else:
            assert row["relative error of ΣpBA"] > 0
