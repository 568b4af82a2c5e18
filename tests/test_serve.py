"""The geolocation endpoint: serve/config.yaml validates, and the app it describes, deployed on the
session's local Ray as `serve run serve/config.yaml` deploys it (`serve.app.run_config`), answers real
HTTP requests on 127.0.0.1 with real mp4s: results equal the in-process Geolocator's, bad requests get
their 4xx, overload gets 503, and no refusal takes a replica down."""

import asyncio
import base64
import dataclasses
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from avgeo.config import load_config
from avgeo.data.mp4 import write_clip
from avgeo.data.synth import run_synth, synth_preset
from avgeo.pipeline import Geolocator
from avgeo.prediction.heatmap import FIGURE_SIZE_PX
from avgeo.serving import MULTIPART_OVERHEAD_BYTES, ServeAppConfig, UploadTooLargeError, read_upload

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve" / "config.yaml"
MODEL_DEPLOYMENTS = ("Perception", "Reasoning", "Prediction")

TEST_ARGS = {
    "max_upload_mib": 1.0,
    "geolocator": {
        "mllm": {"model": "tiny", "max_new_tokens": 16, "temperature": 0.0},
        "num_samples": 64,
        "flow_num_steps": 4,
        "heatmap_resolution_deg": 30.0,
    },
}
"""Overrides of the config's args: small models' settings for 2 shared cores, a 1 MiB upload limit."""

INGRESS_LIMITS = {"max_ongoing_requests": 2, "max_queued_requests": 4}
"""The ingress takes 2 requests at a time and queues up to 4 more (requests still being assigned to the
replica count as queued); past that a request gets 503."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _test_config(port: int) -> dict:
    """serve/config.yaml with the test's args, port, ingress limits and one replica per stage."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (application,) = config["applications"]
    for key, value in TEST_ARGS.items():
        if isinstance(value, dict):
            application["args"][key].update(value)
        else:
            application["args"][key] = value
    for deployment in application["deployments"]:
        if deployment["name"] == "Ingress":
            deployment.update(INGRESS_LIMITS)
        else:
            # Autoscaling is the load benchmark's subject; here a new replica would only slow the cores.
            deployment["autoscaling_config"]["max_replicas"] = 1
    return config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_paths(tmp_path_factory):
    """Three avg-synth ci clips (3 s), paths in manifest order."""
    out_dir = tmp_path_factory.mktemp("avg-synth")
    run_synth(dataclasses.replace(synth_preset("ci"), n_locations=6, clips_per_location=1), out_dir, seed=0)
    return sorted(str(path) for path in (out_dir / "clips").rglob("*.mp4"))[:3]


@pytest.fixture(scope="module")
def endpoint(ray_local):
    """Base URL of the app deployed from the test config as `serve run` deploys it; shut down after."""
    from ray import serve

    from serve.app import run_config

    yield run_config(_test_config(_free_port()))
    serve.shutdown()


@pytest.fixture(scope="module")
def in_process():
    """The Geolocator the deployed app's args describe, in this process."""
    args = load_config(ServeAppConfig, _test_config(port=0)["applications"][0]["args"])
    return Geolocator.from_config(args.geolocator)


def _post(endpoint: str, path: str, name: str | None = None, heatmap: bool = False) -> requests.Response:
    with open(path, "rb") as video:
        return requests.post(
            f"{endpoint}/v1/geolocate",
            params={"heatmap": "true"} if heatmap else None,
            files={"file": (name or Path(path).name, video, "video/mp4")},
            timeout=300,
        )


@pytest.mark.parametrize("path", [SERVE_CONFIG, SERVE_CONFIG.with_name("h100.yaml")], ids=lambda p: p.name)
def test_config_validates_against_serve_schemas(path):
    raw = yaml.safe_load(path.read_text())
    config = ServeDeploySchema.model_validate(raw)
    (application,) = config.applications
    assert (application.name, application.import_path, application.route_prefix) == (
        "avgeo",
        "serve.app:app",
        "/",
    )
    args = load_config(ServeAppConfig, application.args)
    assert args.max_upload_bytes == 256 * 2**20
    deployments = {deployment["name"]: deployment for deployment in raw["applications"][0]["deployments"]}
    assert set(deployments) == {"Ingress", *MODEL_DEPLOYMENTS}
    for name in MODEL_DEPLOYMENTS:
        autoscaling = deployments[name]["autoscaling_config"]
        # Neither schema looks inside autoscaling_config, and a misspelt key there is silently ignored.
        assert set(autoscaling) <= set(AutoscalingConfig.model_fields), name
        parsed = AutoscalingConfig.model_validate(autoscaling)
        assert parsed.min_replicas < parsed.max_replicas, name
        assert deployments[name]["max_ongoing_requests"] >= args.max_batch_size, name
    ingress = deployments["Ingress"]
    assert ingress["max_queued_requests"] > 0 and ingress["max_ongoing_requests"] > 0


def test_default_upload_limit_is_256_mib():
    assert ServeAppConfig().max_upload_bytes == 256 * 2**20


def test_an_upload_is_refused_as_soon_as_it_passes_the_limit():
    chunk, limit = 4096, 64 * 1024
    consumed = []

    async def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'
        for index in range(10_000):  # 40 MiB if read to the end
            consumed.append(index)
            yield b"\0" * chunk

    headers = {"content-type": "multipart/form-data; boundary=b"}  # no Content-Length: a chunked upload
    with pytest.raises(UploadTooLargeError, match=r"over the 0\.0625 MiB limit"):
        asyncio.run(read_upload(headers, body(), limit))
    assert len(consumed) * chunk <= limit + MULTIPART_OVERHEAD_BYTES + chunk


def test_geolocate_answers_concurrent_requests_as_the_in_process_geolocator(endpoint, in_process, clip_paths):
    with ThreadPoolExecutor(len(clip_paths)) as pool:
        responses = list(pool.map(lambda path: _post(endpoint, path), clip_paths))
    for path, response in zip(clip_paths, responses, strict=True):
        assert response.status_code == 200, response.text
        served = response.json()
        expected = in_process.geolocate(path).as_dict()
        assert served["clip"] == Path(path).name
        assert served["models"] == expected["models"]
        assert [atom["kernel"] for atom in served["atoms"]] == [atom["kernel"] for atom in expected["atoms"]]
        assert served["reasoning"] == expected["reasoning"]
        np.testing.assert_allclose(served["latlon_deg"], expected["latlon_deg"], atol=1e-2)
        np.testing.assert_allclose(served["log_density"], expected["log_density"], atol=1e-3)
        assert len(served["modes"]) == len(expected["modes"])
        for served_region, expected_region in zip(
            served["credible_regions"], expected["credible_regions"], strict=True
        ):
            assert served_region["level"] == expected_region["level"]
            np.testing.assert_allclose(served_region["area_km2"], expected_region["area_km2"], rtol=1e-3)
        assert set(served["timings_s"]) == {"upload", "perceive", "reason", "predict", "total"}
        assert "heatmap_png_base64" not in served


def test_heatmap_adds_a_png_of_the_density(endpoint, clip_paths):
    response = _post(endpoint, clip_paths[0], heatmap=True)
    assert response.status_code == 200, response.text
    png = base64.b64decode(response.json()["heatmap_png_base64"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == FIGURE_SIZE_PX
    assert response.json()["timings_s"]["heatmap"] > 0


def test_bad_requests_get_clear_4xx_and_leave_the_replicas_serving(endpoint, clip_paths, tmp_path):
    silent = tmp_path / "silent.mp4"
    write_clip(silent, np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=4, audio=None)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    too_large = tmp_path / "large.mp4"
    too_large.write_bytes(b"\0" * (2**20 + 1))
    cases = {
        "no audio": (_post(endpoint, str(silent)), 422, "NoAudioStreamError", "silent.mp4: no audio stream"),
        "not a video": (_post(endpoint, str(text)), 422, "NotAVideoError", "notes.mp4: not a media file"),
        "too large": (_post(endpoint, str(too_large)), 413, "UploadTooLargeError", "over the 1 MiB limit"),
        "no file": (
            requests.post(f"{endpoint}/v1/geolocate", files={"clip": ("a.mp4", b"x")}, timeout=60),
            400,
            "MissingUploadError",
            "no file in the form field 'file'",
        ),
        "no body": (
            requests.post(f"{endpoint}/v1/geolocate", timeout=60),
            400,
            "MissingUploadError",
            "multipart",
        ),
        # A server path as a form value is text, never a file the endpoint would open.
        "a path": (
            requests.post(f"{endpoint}/v1/geolocate", files={"file": (None, clip_paths[0])}, timeout=60),
            400,
            "MissingUploadError",
            "no file in the form field",
        ),
    }
    for case, (response, status, error, detail) in cases.items():
        assert response.status_code == status, (case, response.text)
        assert response.json()["error"] == error, case
        assert detail in response.json()["detail"], case

    # A client's file name labels the result and nothing more: only its last component is kept.
    response = _post(endpoint, clip_paths[1], name="../../" + clip_paths[1])
    assert response.status_code == 200 and response.json()["clip"] == Path(clip_paths[1]).name
    assert requests.get(f"{endpoint}/healthz", timeout=60).json() == {"status": "ok"}


def test_overload_gets_503_from_the_queue_limit(endpoint, clip_paths):
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: _post(endpoint, clip_paths[2]).status_code, range(16)))
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 1 + INGRESS_LIMITS["max_ongoing_requests"]
    assert _post(endpoint, clip_paths[2]).status_code == 200


def test_models_health_and_openapi(endpoint, in_process):
    models = requests.get(f"{endpoint}/v1/models", timeout=60).json()
    assert models["models"] == in_process.models
    assert models["geolocator"]["num_samples"] == TEST_ARGS["geolocator"]["num_samples"]
    assert requests.get(f"{endpoint}/healthz", timeout=60).json() == {"status": "ok"}
    openapi = requests.get(f"{endpoint}/openapi.json", timeout=60).json()
    operation = openapi["paths"]["/v1/geolocate"]["post"]
    assert "file" in operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"400", "413", "422", "503"} <= set(operation["responses"])
    assert {"/healthz", "/v1/models"} <= set(openapi["paths"])
    assert requests.get(f"{endpoint}/docs", timeout=60).status_code == 200
