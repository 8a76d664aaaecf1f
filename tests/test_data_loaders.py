"""Loaders for users' own data: Alpaca JSON/JSONL, chat JSONL, builtins, datasets names; errors name file:line."""
import json
import sys
import types
from pathlib import Path

import pytest

from devft_lab.data.loaders import load_examples, tiny_examples
from devft_lab.data.records import DataError
from devft_lab.data.templates import PromptTemplate

DATA = Path(__file__).parent / "data"
KEYS = {"instruction", "input", "response", "category"}


def test_alpaca_json_list_maps_output_to_response_and_keeps_categories():
    exs = load_examples(str(DATA / "alpaca_small.json"))
    assert [e["response"] for e in exs] == ["Eat well, sleep enough, and exercise.", "Bonjour", "5"]
    assert [e["category"] for e in exs] == ["default", "translation", "arithmetic"]
    assert exs[1]["input"] == "Good morning" and exs[0]["input"] == ""
    assert all(set(e) == KEYS for e in exs)


def test_alpaca_jsonl_skips_blank_lines_defaults_input_and_reads_named_category_field():
    exs = load_examples(str(DATA / "alpaca_small.jsonl"), category_field="topic")
    assert [e["category"] for e in exs] == ["art", "words", "arithmetic"]
    assert exs[2] == {"instruction": "What is 4 times 5?", "input": "", "response": "20", "category": "arithmetic"}


def test_chat_jsonl_last_assistant_turn_is_response_and_history_is_kept():
    exs = load_examples(str(DATA / "chat_small.jsonl"))
    assert [e["response"] for e in exs] == ["Paris.", "Bye."]
    assert exs[1]["instruction"] == "Now say bye."  # the last user turn
    assert exs[1]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert len(exs[1]["messages"]) == 5 and exs[1]["category"] == "greeting"
    assert exs[0]["category"] == "default"


def test_loaded_examples_render_with_the_alpaca_template():
    ex = load_examples(str(DATA / "alpaca_small.json"))[1]
    prompt = PromptTemplate("alpaca").prompt(ex)
    assert "### Instruction:\nTranslate to French." in prompt and "### Input:\nGood morning" in prompt


@pytest.mark.parametrize("name, line, words", [
    ("bad_malformed.jsonl", 2, "malformed JSON"),
    ("bad_missing_output.jsonl", 3, "missing 'output'"),
    ("bad_empty_chat.jsonl", 2, "'messages' is empty"),
    ("bad_missing_output.json", 6, "missing 'output'"),
])
def test_bad_records_name_file_and_line(name, line, words):
    with pytest.raises(DataError) as e:
        load_examples(str(DATA / name))
    assert f"{name}:{line}" in str(e.value)
    assert words in str(e.value)


def test_malformed_json_list_names_its_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(DataError, match=r"broken\.json:3: malformed JSON"):
        load_examples(str(p))


@pytest.mark.parametrize("messages, words", [
    ([{"role": "user", "content": "Hi"}], "must be the assistant's reply"),
    ([{"role": "assistant", "content": "Hello"}], "no user message"),
    ([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}], "message 0 must be"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "empty response"),
])
def test_bad_chat_turns_are_rejected_with_line(tmp_path, messages, words):
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
                 + "\n" + json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError) as e:
        load_examples(str(p))
    assert "chat.jsonl:2" in str(e.value) and words in str(e.value)


def test_missing_category_field_and_missing_file_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"alpaca_small\.json:2 \(item 0\): no field 'topic'"):
        load_examples(str(DATA / "alpaca_small.json"), category_field="topic")
    with pytest.raises(DataError, match="no such file"):
        load_examples(str(tmp_path / "absent.jsonl"))
    with pytest.raises(DataError, match="max_samples"):
        load_examples("tiny", max_samples=0)


def test_max_samples_is_a_seeded_subset_in_source_order():
    full = load_examples("tiny")
    a, b = load_examples("tiny", max_samples=10, seed=1), load_examples("tiny", max_samples=10, seed=1)
    c = load_examples("tiny", max_samples=10, seed=2)
    assert a == b and a != c and len(a) == 10
    positions = [full.index(e) for e in a]
    assert positions == sorted(positions)


def test_tiny_is_deterministic_correct_and_has_several_categories():
    exs = load_examples("tiny")
    assert exs == tiny_examples("train") and len(exs) == 64
    assert len({json.dumps(e, sort_keys=True) for e in exs}) == 64  # all distinct
    assert {e["category"] for e in exs} == {"copy", "reverse", "add", "upper"}
    for e in exs:
        if e["category"] == "add":
            a, b = e["input"].split(" + ")
            assert e["response"] == str(int(a) + int(b))
        elif e["category"] == "reverse":
            assert e["response"] == e["input"][::-1]
        elif e["category"] == "upper":
            assert e["response"] == e["input"].upper()
        else:
            assert e["response"] == e["input"]
    assert load_examples("tiny", split="test") != exs


def test_lab_delegates_to_the_lab_pool(monkeypatch):
    import devft_lab.data

    pool = [{"instruction": "q", "input": "", "response": "a", "category": "t"}]
    fake = types.SimpleNamespace(load_pool=lambda: pool)
    monkeypatch.setitem(sys.modules, "devft_lab.data.lab", fake)
    monkeypatch.setattr(devft_lab.data, "lab", fake, raising=False)
    assert load_examples("lab") == pool


def test_datasets_name_without_the_package_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r"pip install datasets"):
        load_examples("vicgalle/alpaca-gpt4")


def test_datasets_name_maps_alpaca_and_chat_columns(monkeypatch):
    rows = {"train": [{"instruction": "i", "input": "", "output": "o", "text": "ignored"},
                      {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "r"}]}]}

    def load_dataset(name, split):
        if name != "org/data":
            raise FileNotFoundError(f"Couldn't find {name} (offline)")
        return rows[split]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    exs = load_examples("org/data")
    assert [(e["instruction"], e["response"]) for e in exs] == [("i", "o"), ("u", "r")]
    with pytest.raises(DataError, match=r"could not load dataset 'org/other'.*offline"):
        load_examples("org/other")
    with pytest.raises(DataError, match=r"split 'test'"):
        load_examples("org/data", split="test")


@pytest.mark.parametrize("name", ["alpaca_small.json", "alpaca_small.jsonl", "chat_small.jsonl"])
def test_a_utf8_byte_order_mark_is_accepted_in_json_and_jsonl(tmp_path, name):
    src = DATA / name
    bom = tmp_path / name
    bom.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())  # as Windows tools write UTF-8
    assert load_examples(str(bom)) == load_examples(str(src))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("encoding, hint", [("latin-1", "LATIN1"), ("utf-16", "UTF-16")])
def test_another_encoding_names_the_file_and_line_and_how_to_convert(tmp_path, suffix, encoding, hint):
    recs = [{"instruction": "Capitale ?", "output": "Paris"}, {"instruction": "Été ?", "output": "Oui"}]
    text = (json.dumps(recs, ensure_ascii=False, indent=1) if suffix == ".json"
            else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    p = tmp_path / f"mine{suffix}"
    p.write_bytes(text.encode(encoding))
    with pytest.raises(DataError) as e:
        load_examples(str(p))
    msg = str(e.value)
    first_bad = 1 if encoding == "utf-16" else text[: text.index("É")].count("\n") + 1
    assert msg.startswith(f"{p}:{first_bad}: not UTF-8 text") and f"iconv -f {hint} -t UTF-8" in msg
