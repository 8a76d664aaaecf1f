"""Atomic, pickle-free checkpoints: round trip, RNG states, corruption."""
import json
import random

import numpy as np
import pytest
import torch

from devft_lab.fl.checkpoint import (
    CheckpointError, flatten_optimizer_state, latest_checkpoint, load_checkpoint, save_checkpoint,
    unflatten_optimizer_state,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "global": {"m.lora_A.weight": torch.randn(4, 8, generator=g),
                   "m.lora_B.weight": torch.randn(8, 4, generator=g).to(torch.bfloat16)},
        "client/3": {"m.lora_B.weight": torch.randn(8, 4, generator=g)},
        "ints": {"x": torch.arange(5, dtype=torch.int64)},
    }


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_round_trip_bit_exact_with_rng(tmp_path):
    st = _tensors()
    meta = {"round": 7, "stage": 1, "groups": [[0, 1], [2, 3]], "config_hash": "abc",
            "log_position": {"jsonl_bytes": 123, "jsonl_lines": 7}}
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gauss_next in python's state
    path = save_checkpoint(tmp_path, meta, st)
    expected = _draws()
    random.seed(99); np.random.seed(99); torch.manual_seed(99)
    ck = load_checkpoint(tmp_path, expect_config_hash="abc")
    assert _draws() == expected
    assert ck.path == path and ck.meta == meta
    assert set(ck.tensors) == set(st)
    for g, d in st.items():
        for k, v in d.items():
            assert ck.tensors[g][k].dtype == v.dtype and torch.equal(ck.tensors[g][k], v)


def test_keeps_previous_until_new_complete(tmp_path):
    save_checkpoint(tmp_path, {"round": 1}, _tensors())
    p2 = save_checkpoint(tmp_path, {"round": 2}, _tensors(), keep=2)
    p3 = save_checkpoint(tmp_path, {"round": 3}, _tensors(), keep=2)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == [p2.name, p3.name]
    assert latest_checkpoint(tmp_path) == p3
    # a crash while writing leaves a temp folder only: the latest complete one still loads
    (tmp_path / ".round-000004.tmp-x").mkdir()
    assert load_checkpoint(tmp_path, restore_rng=False).meta["round"] == 3
    # meta that JSON cannot hold is refused before anything is replaced
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, {"round": 4, "bad": object()}, _tensors())
    assert latest_checkpoint(tmp_path) == p3


@pytest.mark.parametrize("victim", ["tensors.safetensors", "rng.safetensors", "state.json"])
def test_truncated_file_gives_clear_error(tmp_path, victim):
    p = save_checkpoint(tmp_path, {"round": 1}, _tensors())
    f = p / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=victim):
        load_checkpoint(p)


def test_corrupt_bytes_and_missing_files(tmp_path):
    p = save_checkpoint(tmp_path, {"round": 1}, _tensors())
    f = p / "tensors.safetensors"
    b = bytearray(f.read_bytes()); b[-1] ^= 0xFF; f.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        load_checkpoint(p)
    (p / "manifest.json").unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_config_hash_mismatch_refused(tmp_path):
    save_checkpoint(tmp_path, {"round": 1, "config_hash": "aaa"}, _tensors())
    with pytest.raises(CheckpointError, match="config hash"):
        load_checkpoint(tmp_path, expect_config_hash="bbb")


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    ts, js = flatten_optimizer_state(opt.state_dict())
    save_checkpoint(tmp_path, {"round": 1, "optim": js}, {"optim/0": ts})
    ck = load_checkpoint(tmp_path, restore_rng=False)
    json.dumps(ck.meta)  # all JSON
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 2).parameters(), lr=1.0)
    opt2.load_state_dict(unflatten_optimizer_state(ck.tensors["optim/0"], ck.meta["optim"]))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))


# --------------------------------------------------------------------------- a damaged newest checkpoint (#35)
def _two(tmp_path):
    """Checkpoints of rounds 1 and 2 (a run keeps two), the RNG draws each one restores."""
    torch.manual_seed(1)
    old = save_checkpoint(tmp_path, {"round": 1, "config_hash": "h"}, _tensors(), keep=2)
    after_old = torch.rand(3).tolist()
    new = save_checkpoint(tmp_path, {"round": 2, "config_hash": "h"}, _tensors(), keep=2)
    return old, new, after_old


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
    from devft_lab.fl.checkpoint import load_newest

    old, new, after_old = _two(tmp_path)
    f = new / ("manifest.json" if damage == "manifest" else "tensors.safetensors")
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip":
        b = bytearray(f.read_bytes()); b[-1] ^= 0xFF; f.write_bytes(bytes(b))
    else:
        f.unlink()
    said = []
    ck = load_newest(tmp_path, expect_config_hash="h", warn=said.append)
    assert ck.path == old and ck.meta["round"] == 1
    assert torch.rand(3).tolist() == after_old  # the older checkpoint's RNG state, not the damaged one's
    assert len(said) == 1 and new.name in said[0] and f"resuming from the previous complete checkpoint {old.name}" in said[0]


def test_every_checkpoint_damaged_says_what_to_do(tmp_path):
    from devft_lab.fl.checkpoint import load_newest

    for p in _two(tmp_path)[:2]:
        f = p / "tensors.safetensors"
        f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"tensors.safetensors is truncated.*No older complete checkpoint "
                                              r"is left.*delete .* and resume again.*--force"):
        load_newest(tmp_path)
    assert load_newest(tmp_path / "none") is None  # no checkpoint at all: the run starts from round 0


def test_a_config_mismatch_is_never_passed_over_for_an_older_checkpoint(tmp_path):
    from devft_lab.fl.checkpoint import load_newest

    _two(tmp_path)
    with pytest.raises(CheckpointError, match="config hash"):
        load_newest(tmp_path, expect_config_hash="other")


def test_stray_files_in_checkpoint_folders_get_a_warning(tmp_path):
    from devft_lab.fl.checkpoint import load_newest

    old, new, _ = _two(tmp_path)
    (tmp_path / "backup.tar").write_bytes(b"x")
    (new / "tensors.safetensors.orig").write_bytes(b"x")
    said = []
    ck = load_newest(tmp_path, restore_rng=False, warn=said.append)
    assert ck.path == new and ck.stray == ["tensors.safetensors.orig"]
    assert any("backup.tar" in s and "no checkpoint writes" in s for s in said)
    assert any(str(new) in s and "tensors.safetensors.orig" in s for s in said)
    said.clear()
    (tmp_path / "backup.tar").unlink()
    (new / "tensors.safetensors.orig").unlink()
    load_newest(tmp_path, restore_rng=False, warn=said.append)
    assert said == []  # a clean folder: nothing to say
