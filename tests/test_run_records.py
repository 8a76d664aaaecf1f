"""A run folder's JSON records: one reader, errors that name the file and the fix."""
from __future__ import annotations

import pytest

from devft_lab.runner.report import json_object
from devft_lab.runner.run import RunError, read_json_record


@pytest.mark.parametrize("text, what", [('{"a": 1', "not valid JSON"), ("[1, 2]", "not list")])
def test_a_broken_record_names_the_file_what_is_wrong_and_the_fix(tmp_path, text, what):
    p = tmp_path / "meta.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=what) as e:
        json_object(p, "delete it")
    assert str(p) in str(e.value) and str(e.value).endswith("delete it")
    with pytest.raises(RunError, match=what) as e:  # the runner's reader: same check, the runner's fix
        read_json_record(p)
    assert "devft-lab run CONFIG --force" in str(e.value)


def test_a_good_record_is_read_as_it_is(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text('{"done": true, "round": 3}', encoding="utf-8")
    assert json_object(p, "x") == read_json_record(p) == {"done": True, "round": 3}
