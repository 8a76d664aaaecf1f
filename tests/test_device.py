"""The compute-dtype probe: measured, recorded, reused on resume."""
import pytest
import torch

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
    assert meta["lora_dropout_masks"] == "bits15x4"  # a CPU run: BitsDropout (devft_lab/core/dropout.py)
    assert meta["packing_layout"] == "flat_rows"  # devft_lab/core/train.py: pack
    # a resumed run does not probe again: a machine whose probe now says fp32 keeps bf16
    monkeypatch.setattr(device, "probe_compute_dtype", lambda dev, n=1024: {"chosen": "float32", "gflops": {}})
    model = torch.nn.Linear(2, 2)
    assert resolve_compute(cfg, model, meta["compute_dtype"])["dtype"] == "bfloat16"
    assert resolve_compute(cfg, model)["dtype"] == "float32"


def test_a_run_records_its_attention_kernel_and_resume_reuses_it(tmp_path, monkeypatch):
    import json

    from devft_lab.core import attention
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import RunError, resolve_compute, start

    cfg = load_config("tiny", ["devft.enabled=false", "fed.num_rounds=1", f"out_dir={tmp_path}", "name=r",
                              "train.attention=auto"])
    monkeypatch.setattr(attention, "probe_attention", lambda *a, **k: {"chosen": "eager", "ms": {"sdpa": 2, "eager": 1}})
    start(cfg, quiet=True)
    compute = json.loads((tmp_path / "r" / "meta.json").read_text())["compute_dtype"]
    assert compute["attention"] == "eager" and compute["attention_probe"]["ms"] == {"sdpa": 2, "eager": 1}
    monkeypatch.setattr(attention, "probe_attention", lambda *a, **k: {"chosen": "sdpa", "ms": {}})
    model = torch.nn.Linear(2, 2)
    assert resolve_compute(cfg, model, compute)["attention"] == "eager"  # resumed: as recorded
    old = {k: v for k, v in compute.items() if not k.startswith("attention")}
    with pytest.raises(RunError, match="results-frozen-2026-12-07"):  # no kernel recorded: no guess
        resolve_compute(cfg, model, old)
    cfg.train.attention = "eager"
    assert resolve_compute(cfg, model, old)["attention"] == "eager"  # a named kernel is taken as it is


def test_an_unknown_attention_kernel_is_refused_with_the_choices():
    from devft_lab.runner.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.attention = 'flash' is not one of auto, sdpa, eager"):
        load_config("tiny", ["train.attention=flash"])


def test_the_tiny_config_runs_no_timing_probe(monkeypatch):
    """Tests compare tiny runs bit for bit across processes (Flower vs simulation, kill/resume vs a
    reference); a timing probe could pick another kernel in each, so tiny names its compute."""
    from devft_lab.core import attention, device
    from devft_lab.core.models import load_model
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import resolve_compute

    def refuse(*a, **k):
        raise AssertionError("the tiny config ran a timing probe")

    monkeypatch.setattr(attention, "probe_attention", refuse)
    monkeypatch.setattr(device, "probe_compute_dtype", refuse)
    cfg = load_config("tiny")
    compute = resolve_compute(cfg, load_model(cfg.model.name, device="cpu")[0])
    assert (compute["dtype"], compute["attention"]) == ("float32", "sdpa")
    assert compute["probe"] is None and compute["attention_probe"] is None
