"""Byte counts, FLOPs and the ledger."""
import csv
import json
import time

import pytest
import torch

from devft_lab.fl.accounting import (
    Ledger, RoundCost, Timer, cuda_peak_mb, forward_flops, num_params, peak_rss_mb, release_free_memory, rss_mb,
    tensor_bytes, training_flops,
)


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2),
                                         (torch.int8, 1), (torch.float64, 8)])
def test_bytes_equal_numel_times_element_size(dtype, size):
    st = {"a": torch.zeros(3, 5, dtype=dtype), "b": torch.zeros(7, dtype=dtype)}
    assert tensor_bytes(st) == 22 * size
    assert tensor_bytes(st["a"]) == 15 * size
    assert tensor_bytes(list(st.values())) == 22 * size
    assert num_params(st) == 22


def test_flops_and_memory():
    assert forward_flops(10, 3) == 60
    assert training_flops(10, 3) == 180
    assert training_flops(10, 3, lora_params=1, lora_only=True) == (40 + 6) * 3
    assert peak_rss_mb() > 1
    if not torch.cuda.is_available():
        assert cuda_peak_mb() == 0.0
    with Timer() as t:
        time.sleep(0.02)
    assert 0.02 <= t.seconds < 5
    m = torch.nn.Linear(4, 2)
    m.bias.requires_grad_(False)
    assert num_params(m) == 10 and num_params(m, trainable_only=True) == 8


def test_ledger_cumulates_and_writes(tmp_path):
    led = Ledger(tmp_path / "log.jsonl", tmp_path / "log.csv")
    for t in range(3):
        led.record(RoundCost(round=t, stage=0, uplink_bytes=100, downlink_bytes=200,
                             submodel_delivery_bytes=1000 if t == 0 else 0, flops_estimate=1e9,
                             train_s=0.5, extra={"loss": 1.0 / (t + 1)}))
    tot = led.totals()
    assert tot["paper_bytes"] == 300 and tot["full_bytes"] == 300 + 600 + 1000
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["cum_uplink_bytes"] for r in rows] == [100, 200, 300]
    assert rows[-1]["cum_full_bytes"] == 1900 and rows[-1]["extra"]["loss"] == pytest.approx(1 / 3)
    with open(tmp_path / "log.csv") as f:
        crow = list(csv.DictReader(f))
    assert len(crow) == 3 and crow[-1]["cum_paper_bytes"] == "300"
    assert "GB" in led.summary()


def test_ledger_resume_truncates_to_checkpoint_position(tmp_path):
    led = Ledger(tmp_path / "l.jsonl", tmp_path / "l.csv")
    for t in range(2):
        led.record(RoundCost(round=t, uplink_bytes=10))
    pos = led.position()
    assert pos["jsonl_lines"] == 2 and pos["csv_lines"] == 3
    led.record(RoundCost(round=2, uplink_bytes=10))  # logged after the checkpoint: dropped
    back = Ledger.resume(tmp_path / "l.jsonl", tmp_path / "l.csv", pos)
    assert back.totals()["uplink_bytes"] == 20 and len(back.rows) == 2
    back.record(RoundCost(round=2, uplink_bytes=5))
    assert back.rows[-1]["cum_uplink_bytes"] == 25
    assert len((tmp_path / "l.csv").read_text().splitlines()) == 4


# --------------------------------------------------------------------------- a lost round log (#35)
def _logged(tmp_path, n=5, after=2):
    """A ledger of ``n`` rounds (floats with long expansions, NaN, metrics), the checkpoint position
    after ``n``, then ``after`` rounds logged past it; returns the position and both files' text at it."""
    led = Ledger(tmp_path / "rounds.jsonl", tmp_path / "rounds.csv")
    for t in range(n):
        led.record(RoundCost(round=t, stage=t // 2, num_clients=2, uplink_bytes=1000 + t, downlink_bytes=7 * t,
                             flops_estimate=1.234567890123e12 * (t + 1), train_s=0.1 + t / 3, peak_rss_mb=1e3 / 7,
                             extra={"loss": float("nan") if t == 1 else 1 / (t + 3), "clients": [0, t],
                                    "acc_x": 12.5}))
    pos = led.position()
    texts = ((tmp_path / "rounds.jsonl").read_text(), (tmp_path / "rounds.csv").read_text())
    for t in range(n, n + after):
        led.record(RoundCost(round=t, uplink_bytes=1))
    return pos, texts, led.totals()


@pytest.mark.parametrize("lost, how", [("rounds.jsonl", "delete"), ("rounds.jsonl", "cut"),
                                       ("rounds.csv", "delete"), ("rounds.csv", "cut")])
def test_a_lost_round_log_is_rebuilt_byte_for_byte_from_the_other(tmp_path, lost, how):
    pos, (jsonl, csv_text), _ = _logged(tmp_path)
    f = tmp_path / lost
    if how == "delete":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:40])
    back = Ledger.resume(tmp_path / "rounds.jsonl", tmp_path / "rounds.csv", pos)
    assert (tmp_path / "rounds.jsonl").read_text() == jsonl and (tmp_path / "rounds.csv").read_text() == csv_text
    assert len(back.rows) == pos["rounds"] == 5
    assert back.totals()["uplink_bytes"] == sum(1000 + t for t in range(5))  # every round counted
    assert back.rebuilt == [f"{lost} ({'was missing' if how == 'delete' else 'was cut short'}) rebuilt from "
                            f"{'rounds.csv' if lost == 'rounds.jsonl' else 'rounds.jsonl'}: 5 rounds"]


def test_both_round_logs_lost_is_refused_not_totalled(tmp_path):
    from devft_lab.fl.accounting import LogError

    pos, _, _ = _logged(tmp_path)
    (tmp_path / "rounds.jsonl").unlink()
    (tmp_path / "rounds.csv").write_text("")
    with pytest.raises(LogError, match=r"rounds.jsonl \(missing\) and rounds.csv \(0 bytes, cut short\): the "
                                       r"checkpoint was saved after 5 logged rounds.*--force"):
        Ledger.resume(tmp_path / "rounds.jsonl", tmp_path / "rounds.csv", pos)


def test_a_round_log_with_rounds_missing_in_the_middle_is_refused(tmp_path):
    from devft_lab.fl.accounting import LogError

    pos, _, _ = _logged(tmp_path, after=0)
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "rounds.jsonl").write_text("".join(lines[:2] + lines[3:]) + "\n" * len(lines[2]))  # same size
    with pytest.raises(LogError, match=r"rounds.jsonl holds 4 rounds but the checkpoint was saved after 5"):
        Ledger.resume(tmp_path / "rounds.jsonl", tmp_path / "rounds.csv", pos)


def test_release_free_memory_returns_a_fragmented_heap_to_the_os():
    """Free 200 MB of small heap blocks while the last one stays live (so glibc cannot shrink the
    heap from the top): the pages stay resident until release_free_memory hands them back."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim
    except (OSError, AttributeError):
        pytest.skip("not glibc: release_free_memory does nothing here")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 100_000, 2000  # below glibc's 128 kB mmap threshold: heap blocks, not mappings
    before = rss_mb()
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # touch every page: resident
    for b in blocks[:-1]:
        libc.free(b)
    held = rss_mb() - before
    assert release_free_memory() is True
    after = rss_mb() - before
    libc.free(blocks[-1])
    assert held > 150 and after < held / 4, (held, after)
