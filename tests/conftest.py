"""Session-wide test settings: offline model hubs and side effects kept inside the checkout."""

import os
from pathlib import Path

import pytest

_CACHE = Path(__file__).resolve().parents[1] / ".cache"
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": str(_CACHE / "huggingface"),
    "TORCH_EXTENSIONS_DIR": str(_CACHE / "torch_extensions"),
    "MPLCONFIGDIR": str(_CACHE / "matplotlib"),
    "NUMBA_CACHE_DIR": str(_CACHE / "numba"),
    "WANDB_MODE": "disabled",
    "RAY_AUTH_MODE": "disabled",
    "GEOMSTATS_BACKEND": "pytorch",
}.items():
    os.environ.setdefault(_key, _value)

# geomstats' torch backend makes float64 torch's default dtype when imported; import it once here and
# restore float32, so no test's dtype depends on which module happened to import geomstats first.
import geomstats.backend  # noqa: E402, F401
import torch  # noqa: E402

torch.set_default_dtype(torch.float32)


@pytest.fixture
def geomstats_float64():
    """geomstats' torch backend builds its tensors in torch's default dtype and expects float64."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)
