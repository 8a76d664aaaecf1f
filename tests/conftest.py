import os

import pytest

# Progress bars off and no hub look-ups during tests.
os.environ.setdefault("DEVFT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY = ["tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-mistral"]


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded model (fp32, CPU), loaded once per test session."""
    from devft_lab.core.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture
def tiny_sim(tmp_path):
    """``tiny_sim(name, *overrides, until=None, resume=False)``: a full-model simulation of the tiny
    config (4 rounds, no hold-out) under ``tmp_path/name``, run (or resumed) to round ``until``."""
    def run(name, *overrides, until=None, resume=False):
        from devft_lab.fl.simulation import Simulation
        from devft_lab.runner.config import load_config
        from devft_lab.runner.run import build

        cfg = load_config("tiny", ["devft.enabled=false", "fed.num_rounds=4", "eval.holdout=0", f"out_dir={tmp_path}",
                                   f"name={name}", *overrides])
        p = build(cfg, progress=False)
        sim = (Simulation.resume if resume else Simulation)(p.plan, p.strategy, p.client_data, p.settings,
                                                             tmp_path / name, p.evaluator)
        sim.run(until_round=until)
        return sim
    return run
