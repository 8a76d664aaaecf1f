"""Seeded client sampling."""
import random

import pytest

from devft_lab.fl.sampling import num_sampled, sample_clients, sampling_schedule


def test_deterministic_from_seed_and_round():
    a = sampling_schedule(20, 2, 50, seed=7)
    random.seed(123)  # global RNG state does not matter
    b = sampling_schedule(20, 2, 50, seed=7)
    assert a == b
    assert sample_clients(20, 2, 31, seed=7) == a[31]  # resume at round 31 needs no state
    assert sampling_schedule(20, 2, 50, seed=8) != a
    assert len({tuple(s) for s in a}) > 10  # rounds differ


@pytest.mark.parametrize("n, c, k", [(20, 2, 2), (20, 0.1, 2), (10, 0.25, 3), (5, 1.0, 5), (3, 0.01, 1)])
def test_within_range_without_replacement(n, c, k):
    assert num_sampled(n, c) == k
    for t in range(30):
        s = sample_clients(n, c, t, seed=1)
        assert len(s) == k == len(set(s))
        assert all(0 <= i < n for i in s) and s == sorted(s)


def test_available_subset_and_errors():
    for t in range(10):
        assert set(sample_clients(10, 2, t, 0, available=[1, 4, 7])) <= {1, 4, 7}
    for bad in ((10, 0), (10, 11), (10, 1.5), (10, 0.0), (0, 1)):
        with pytest.raises(ValueError):
            num_sampled(*bad)
    with pytest.raises(ValueError):
        sample_clients(10, 2, -1, 0)
