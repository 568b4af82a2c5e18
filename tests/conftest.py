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
    "AVGEO_HOME": str(_CACHE / "avgeo"),
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of small-model tests (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): tiny
    matmuls gain nothing from intra-op threads, and spinning threads stall when Ray workers or other
    processes share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def geomstats_float64():
    """geomstats' torch backend builds its tensors in torch's default dtype and expects float64."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray cluster (2 CPUs) shared by every test of the session that needs one."""
    import ray

    os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head():
    """A `ray start --head` cluster on 127.0.0.1 with its job server, as a user starts one.

    Yields the dashboard address for `ray job submit --address`. It runs with `--block` in its own
    process group, so stopping it ends exactly this cluster (`ray stop` would end every Ray process on
    the machine, the session's `ray_local` included).
    """
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.request

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    gcs_port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="avgeo-ray-", dir="/tmp")
    venv_bin = Path(sys.executable).parent
    # Every port of its own: the defaults (e.g. the dashboard agent's 52365) clash with another cluster.
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port",
    )]  # fmt: skip
    head = subprocess.Popen(
        [str(venv_bin / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs_port}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", *ports, f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # `python` in a submitted job's entrypoint is this venv's, as for a user who activated it.
        env={**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up (logs in {temp_dir})") from None
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
