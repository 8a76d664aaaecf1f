"""First-fit-decreasing packing (training micro-batches and evaluation passes share it)."""
import pytest

from devft_lab.core.packing import first_fit_decreasing


@pytest.mark.parametrize("capacity", [1, 10, 40, 64, 1000])
def test_every_index_once_rows_within_capacity_longer_ones_alone(capacity):
    lengths = [5, 50, 7, 30, 30, 2, 64, 11, 1, 33, 7]
    rows = first_fit_decreasing(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= capacity or len(row) == 1


def test_longest_first_into_the_first_row_with_room_ties_in_index_order():
    assert first_fit_decreasing([3, 5, 2, 5], 8) == [[1, 0], [3, 2]]
    assert first_fit_decreasing([], 8) == []
