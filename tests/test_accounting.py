"""Byte counts, FLOPs and the ledger."""
import csv
import json
import time

import pytest
import torch

from devft_lab.fl.accounting import (
    Ledger, RoundCost, Timer, cuda_peak_mb, forward_flops, num_params, peak_rss_mb, tensor_bytes,
    training_flops,
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
