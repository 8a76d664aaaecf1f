"""The compute-dtype probe: measured, recorded, reused on resume."""
import pytest

from devft_lab.core import device


def test_probe_picks_the_faster_dtype_by_the_margin(monkeypatch):
    speeds = {"float32": 100.0, "bfloat16": 250.0}
    monkeypatch.setattr(device, "matmul_gflops", lambda dtype, dev, n=1024: speeds[str(dtype).replace("torch.", "")])
    assert device.probe_compute_dtype("cpu")["chosen"] == "bfloat16"
    speeds["bfloat16"] = 105.0  # faster, but within the probe's noise margin
    assert device.probe_compute_dtype("cpu")["chosen"] == "float32"
    speeds["bfloat16"] = 2.0  # the machine where bf16 matmul was 60x slower
    p = device.probe_compute_dtype("cpu")
    assert p["chosen"] == "float32" and p["gflops"] == {"float32": 100.0, "bfloat16": 2.0}


def test_real_probe_returns_measured_numbers():
    p = device.probe_compute_dtype("cpu", n=128)
    assert p["chosen"] in ("float32", "bfloat16") and p["gflops"]["float32"] > 0


def test_explicit_dtype_skips_the_probe_and_bad_names_fail():
    assert device.compute_dtype("float32", "cpu") == ("float32", None)
    with pytest.raises(ValueError, match="use auto"):
        device.compute_dtype("fp8", "cpu")


def test_a_run_records_its_compute_dtype_and_resume_reuses_it(tmp_path, monkeypatch):
    import json

    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import resolve_compute, start

    cfg = load_config("tiny", ["model.dtype=auto", "devft.enabled=false", "fed.num_rounds=1",
                               f"out_dir={tmp_path}", "name=r"])
    monkeypatch.setattr(device, "probe_compute_dtype",
                        lambda dev, n=1024: {"chosen": "bfloat16", "gflops": {"float32": 1.0, "bfloat16": 9.0}})
    start(cfg, quiet=True)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["compute_dtype"]["dtype"] == "bfloat16" and meta["compute_dtype"]["probe"]["gflops"]["bfloat16"] == 9.0
    # a resumed run does not probe again: a machine whose probe now says fp32 keeps bf16
    monkeypatch.setattr(device, "probe_compute_dtype", lambda dev, n=1024: {"chosen": "float32", "gflops": {}})
    assert resolve_compute(cfg, meta["compute_dtype"])["dtype"] == "bfloat16"
    assert resolve_compute(cfg)["dtype"] == "float32"
