"""Session-wide test settings: offline model hubs and side effects kept inside the checkout."""

import os
from pathlib import Path

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
