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


def test_factor_bytes_follow_the_shapes():
    """A is r x d_in and B is d_out x r: their bytes are r d_in and d_out r numbers."""
    state = zoo.synthetic_clients(1, 0.0, rank=3, out_dim=8, in_dim=20)[0]  # float64
    assert zoo.factor_bytes(state) == {"A": 3 * 20 * 8, "B": 8 * 3 * 8}
    assert get_strategy("ffa-lora").uplink(state).keys() == {k for k in state if "lora_B" in k}


def _fake_run(initial, losses, step_bytes=1000):
    from pathlib import Path

    from devft_lab.runner.report import RunLog

    rows = [{"round": i, "extra": {"eval_loss": v}, "cum_train_s": 1.0 + i, "cum_aggregate_s": 0.0,
             "cum_paper_bytes": step_bytes * (i + 1), "cum_full_bytes": 3 * step_bytes * (i + 1)}
            for i, v in enumerate(losses)]
    return RunLog(Path("."), "x", rows, {"eval_loss": initial}, {"done": True}, {})


def test_runs_rows_and_short_runs_figure():
    runs = {"fedit": _fake_run(1.2, [1.1, 1.0]), "ffa-lora": _fake_run(1.2, [1.15, 1.05], step_bytes=400)}
    rows = {r["strategy"]: r for r in zoo.runs_rows(runs)}
    assert rows["fedit"]["eval_loss before"] == 1.2 and rows["fedit"]["eval_loss after"] == 1.0
    assert rows["fedit"]["change"] == pytest.approx(-0.2)
    assert rows["ffa-lora"]["LoRA uplink (MB)"] == pytest.approx(800 / 1e6)
    assert rows["ffa-lora"]["all bytes (MB)"] == pytest.approx(2400 / 1e6)
    fig = zoo.short_runs_figure(runs, uniform_nats=10.8, title="one seed")
    full, zoomed, by_bytes = fig.axes[:3]
    labels = {l.get_label(): l.get_ydata()[0] for l in full.get_lines() if not l.get_label().startswith("_")}
    assert labels["untrained model"] == 1.2 and labels["uniform guess, ln V = 10.80"] == 10.8
    assert full.get_ylim() == (0, pytest.approx(10.8 * 1.08))
    # far from the runs, the uniform line is named in the zoomed titles instead of squashing them
    assert all("uniform guess" not in l.get_label() for ax in (zoomed, by_bytes) for l in ax.get_lines())
    assert "far above" in zoomed.get_title()
    near = zoo.short_runs_figure({"a": _fake_run(5.5, [5.4, 5.3])}, uniform_nats=5.56)
    assert any("uniform guess" in l.get_label() for l in near.axes[1].get_lines())
