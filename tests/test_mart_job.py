"""The MART job as a user runs it: `ray job submit` to a `ray start --head` cluster trains, checkpoints
every epoch, and a second submission with one more epoch resumes where the first stopped."""

import subprocess
import sys
from pathlib import Path

import pytest

from avgeo.distributed.mart import JOB_CONFIG_FILE
from avgeo.distributed.mart_training import ICSAE_DIR, METRICS_FILE
from avgeo.perception.icsae import ICSAE
from avgeo.runlog import MetricsLog

REPO = Path(__file__).resolve().parents[1]


def _submit(address: str, tmp_path: Path, epochs: int) -> str:
    """`ray job submit … -- python jobs/mart.py --config configs/mart/tiny.yaml`, small data; its output."""
    overrides = {
        "cache_dir": tmp_path / "cache",
        "out_dir": tmp_path / "out",
        "storage_path": tmp_path / "runs",
        "factory.num_train": 24,
        "factory.num_heldout": 8,
        "factory.mixtures.max_duration_s": 2.0,
        "factory.render_stage.batch_size": 8,
        "factory.encode_stage.batch_size": 8,
        "train.batch_size": 4,
        "train.epochs": epochs,
    }
    ray_cli = str(Path(sys.executable).with_name("ray"))
    command = [ray_cli, "job", "submit", "--address", address, "--working-dir", ".", "--"]
    # The venv's python: what `python` is in an activated venv, whatever PATH the cluster was started with.
    command += [sys.executable, "jobs/mart.py", "--config", "configs/mart/tiny.yaml"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0 and "succeeded" in output, output[-4000:]
    return output


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_trains_checkpoints_and_resumes(ray_head, tmp_path):
    first = _submit(ray_head, tmp_path, epochs=2)
    assert "24 training mixtures (built in" in first
    metrics = MetricsLog(tmp_path / "out" / METRICS_FILE)
    assert [record["epoch"] for record in metrics.read()] == [1, 2]
    checkpoints = [path for path in (tmp_path / "runs" / "mart-tiny").glob("checkpoint_*") if path.is_dir()]
    assert checkpoints and all((path / ICSAE_DIR / "model.safetensors").is_file() for path in checkpoints)
    assert (tmp_path / "out" / JOB_CONFIG_FILE).is_file()
    initial = ICSAE.from_pretrained("tiny").dictionary
    after_two = ICSAE.from_pretrained(tmp_path / "out" / ICSAE_DIR).dictionary

    second = _submit(ray_head, tmp_path, epochs=3)
    assert "resuming after epoch 2 of 3" in second
    assert "24 training mixtures (cached)" in second and "3 epochs" in second
    records = metrics.read()
    assert [record["epoch"] for record in records] == [1, 2, 3], "only the new epoch is trained"
    # Epoch 3 started from epoch 2's dictionary: three epochs of drift from the start, not one.
    after_three = ICSAE.from_pretrained(tmp_path / "out" / ICSAE_DIR).dictionary
    assert (after_three - initial).norm() > (after_two - initial).norm() > 0
