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
