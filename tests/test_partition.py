"""Partitioner properties: a true partition, seeded, the skew each kind promises, clear errors."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from devft_lab.runner.config import DataConfig
from devft_lab.data.partition import (PARTITIONERS, category_skew, params_of, partition,
                                      partition_counts, partition_examples, plot_partition)
from devft_lab.data.records import DataError

rng = np.random.default_rng(123)
CATS = [f"task{int(c)}" for c in rng.integers(0, 6, 900)]  # 6 categories, unequal sizes
N_CLIENTS = 8
PARAMS = {"iid": {}, "dirichlet": {"alpha": 0.5}, "pathological": {"k": 2}, "shards": {"shards_per_client": 2},
          "natural": {}, "quantity_skew": {"alpha": 1.0}}


def run(name, seed=0, **kw):
    n = 6 if name == "natural" else N_CLIENTS
    return partition(CATS, name, n, seed=seed, **{**PARAMS[name], **kw})


def tv_from_global(parts, cats):
    """Mean total-variation distance of client category mixes from the pool's (computed here)."""
    counts, _ = partition_counts(parts, cats)
    glob = counts.sum(0) / counts.sum()
    return np.mean([0.5 * np.abs(row / row.sum() - glob).sum() for row in counts if row.sum()])


def test_every_partitioner_is_tested():
    assert set(PARAMS) == set(PARTITIONERS)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_sample_lands_in_exactly_one_client(name, seed):
    parts = run(name, seed)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(len(CATS)))
    assert all(p == sorted(p) for p in parts)
    assert all(isinstance(i, int) for i in flat)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_same_seed_same_split(name):
    assert run(name, seed=3) == run(name, seed=3)


@pytest.mark.parametrize("name", sorted(set(PARAMS) - {"natural"}))
def test_different_seed_different_split(name):
    assert run(name, seed=3) != run(name, seed=4)


def test_natural_is_one_category_per_client_in_sorted_or_given_order():
    parts = run("natural")
    counts, names = partition_counts(parts, CATS)
    assert ((counts > 0).sum(1) == 1).all()
    assert list(np.argmax(counts, 1)) == list(range(6))  # client i holds names[i]
    order = list(reversed(names))
    parts2 = partition(CATS, "natural", 6, order=order)
    assert [CATS[p[0]] for p in parts2] == order


def test_iid_sizes_differ_by_at_most_one_and_mix_matches_pool():
    parts = run("iid")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert tv_from_global(parts, CATS) < 0.15


def test_dirichlet_skew_grows_as_alpha_falls():
    alphas = [100.0, 1.0, 0.1]
    tv = [np.mean([tv_from_global(partition(CATS, "dirichlet", N_CLIENTS, seed=s, alpha=a), CATS)
                   for s in range(5)]) for a in alphas]
    assert tv[0] < tv[1] < tv[2], tv
    assert tv[0] < 0.1 and tv[2] > 0.5, tv
    # and the mean number of categories a client sees shrinks
    held = [np.mean((partition_counts(partition(CATS, "dirichlet", N_CLIENTS, seed=0, alpha=a), CATS)[0] > 0).sum(1))
            for a in alphas]
    assert held[0] == 6 and held[2] < held[0]


def test_dirichlet_balance_evens_out_sizes():
    def spread(balance):
        return np.mean([np.std([len(p) for p in partition(CATS, "dirichlet", N_CLIENTS, seed=s, alpha=0.3,
                                                          balance=balance)]) for s in range(5)])
    assert spread(True) < spread(False)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_each_client_at_most_k_categories(k):
    for seed in range(3):
        counts, _ = partition_counts(partition(CATS, "pathological", N_CLIENTS, seed=seed, k=k), CATS)
        assert ((counts > 0).sum(1) <= k).all()
        assert ((counts > 0).sum(1) == k).all()  # 900 examples: every holder gets some of each


def test_shards_are_equal_sized_and_category_concentrated():
    parts = run("shards")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2
    assert tv_from_global(parts, CATS) > tv_from_global(run("iid"), CATS) + 0.3


def test_quantity_skew_gives_unequal_sizes_and_more_so_for_small_alpha():
    def cv(**kw):
        return np.mean([np.std(s) / np.mean(s) for s in
                        ([len(p) for p in partition(CATS, "quantity_skew", N_CLIENTS, seed=seed, **kw)]
                         for seed in range(5))])
    sizes = [len(p) for p in run("quantity_skew")]
    assert max(sizes) >= 2 * min(sizes)
    assert cv(alpha=0.3) > cv(alpha=10.0) > 0
    assert cv(sigma=1.5) > cv(sigma=0.1)
    # contents stay IID-like: the big clients' mixes are close to the pool's
    parts = partition(CATS, "quantity_skew", 4, seed=0, alpha=100.0)
    assert tv_from_global(parts, CATS) < 0.15


def test_min_samples_violation_names_client_count_and_fix():
    with pytest.raises(DataError) as e:
        partition(CATS, "dirichlet", 40, seed=0, min_samples=20, alpha=0.05)
    msg = str(e.value)
    assert "client " in msg and "fewer than min_samples = 20" in msg and "raise alpha" in msg
    assert "fewer clients" in msg and "more data" in msg
    with pytest.raises(DataError, match=r"900 examples cannot give 100 clients 10 each"):
        partition(CATS, "iid", 100, min_samples=10)
    # the same request with a large alpha is satisfiable
    parts = partition(CATS, "dirichlet", 40, seed=0, min_samples=5, alpha=100.0)
    assert min(len(p) for p in parts) >= 5


def test_pathological_min_samples_names_the_empty_client():
    cats = ["a"] * 3 + ["b"] * 30
    with pytest.raises(DataError, match=r"client \d+ got [0-2] examples, fewer than min_samples = 3"):
        partition(cats, "pathological", 6, min_samples=3, k=1)


@pytest.mark.parametrize("call, words", [
    (lambda: partition(CATS, "label_skew", 4), "unknown partitioner 'label_skew'; choose one of ['dirichlet', 'iid'"),
    (lambda: partition(CATS, "iid", 4, alpha=1.0), "has no parameter(s) ['alpha']; it accepts none"),
    (lambda: partition(CATS, "dirichlet", 4, beta=1.0), "it accepts ['alpha', 'balance']"),
    (lambda: partition(CATS, "natural", 4), "data has 6 categories"),
    (lambda: partition(CATS, "natural", 6, order=["task0", "nope"]), "unknown: ['nope']"),
    (lambda: partition(CATS, "pathological", 2, k=2), "raise k to >= 3"),
    (lambda: partition(CATS, "pathological", 8, k=7), "between 1 and the number of categories (6)"),
    (lambda: partition(CATS, "dirichlet", 4, alpha=0.0), "must be one positive number"),
    (lambda: partition(CATS, "iid", 0), "num_clients = 0"),
])
def test_bad_requests_say_what_is_wrong(call, words):
    with pytest.raises(DataError) as e:
        call()
    assert words in str(e.value)


def test_params_of_lists_keyword_parameters():
    assert params_of("dirichlet") == ["alpha", "balance"]
    assert params_of("natural") == ["order"]
    assert params_of("iid") == []


def test_counts_and_category_skew_on_hand_built_split():
    cats = ["x", "x", "y", "y"]
    counts, names = partition_counts([[0, 2], [1, 3]], cats)
    assert names == ["x", "y"] and counts.tolist() == [[1, 1], [1, 1]]
    assert category_skew([[0, 2], [1, 3]], cats) == 0.0
    assert category_skew([[0, 1], [2, 3]], cats) == pytest.approx(0.5)  # each client: TV 0.5 from (0.5, 0.5)
    assert category_skew([[0, 1], [2, 3]], cats) == pytest.approx(tv_from_global([[0, 1], [2, 3]], cats))


def test_shipped_configs_use_known_partitioners():
    assert DataConfig().partitioner in PARTITIONERS
    cfg_dir = Path(__file__).parents[1] / "devft_lab" / "runner" / "configs"
    for path in cfg_dir.glob("*.yaml"):
        data = yaml.safe_load(path.read_text()).get("data", {})
        assert data.get("partitioner", "iid") in PARTITIONERS, path.name


def test_partition_examples_groups_dicts_by_category():
    pool = [{"category": c, "i": i} for i, c in enumerate(CATS[:60])]
    groups = partition_examples(pool, "natural", len(set(CATS[:60])))
    assert sum(len(g) for g in groups) == 60
    assert all(len({ex["category"] for ex in g}) == 1 for g in groups)
    with pytest.raises(DataError, match="no 'category' field"):
        partition_examples([{"x": 1}], "iid", 1)


def test_plot_partition_draws_stacked_client_by_category_bars():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = run("dirichlet")
    ax = plot_partition(parts, CATS)
    counts, names = partition_counts(parts, CATS)
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(len(names), len(parts))
    assert (heights.T == counts).all()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    plt.close(ax.figure)
