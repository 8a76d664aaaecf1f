import pytest

from devft_lab.core.tables import markdown_table


def test_markdown_table_lines():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == ["| a | b |", "|---|---|", "| 1 | x |",
                                                                 "| 2.5 | None |"]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
