"""The geolocation endpoint on Ray Serve: `serve run serve/config.yaml` (embedded default), or
`serve deploy serve/config.yaml` against a running cluster.

Three model deployments, each batching its requests (`@serve.batch`) and scaling on its own, composed by
a FastAPI ingress through `DeploymentHandle`s:

    Ingress (upload, JSON) -> Perception (decode, GeoCLIP, CLAP, IC-SAE) -> Reasoning (MLLM)
                           -> Prediction (RFM head; the density PNG on request)

The API (OpenAPI docs at /docs): `POST /v1/geolocate` (multipart field `file`, `?heatmap=true` adds a
base64 PNG of the density), `GET /v1/models`, `GET /healthz`. Refused requests get 400 (no file), 413
(over `max_upload_mib`), 422 (not a usable video, e.g. no audio track) and, from Serve when the ingress
queue is full (`max_queued_requests`), 503. The work itself is `avgeo.pipeline`'s stages; request
handling is `avgeo.serving`'s.
"""

# No `from __future__ import annotations`: Serve reads the ingress methods' signatures as objects, and FastAPI
# would take a string-annotated `request: Request` for a query parameter.

import asyncio
import base64
import functools
import time
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from avgeo.config import config_to_dict, load_config
from avgeo.pipeline import PerceptionStage, PredictionStage, ReasoningStage
from avgeo.serving import (
    UPLOAD_FIELD,
    RequestError,
    ServeAppConfig,
    UnusableVideoError,
    decode_upload,
    read_upload,
)
from avgeo.stage_outputs import GeolocationResult, Perception, Prediction, Reasoning

API_VERSION = "1"

api = FastAPI(
    title="avgeo",
    version=API_VERSION,
    description="Audiovisual geolocation of video: where on Earth a clip was recorded, and why.",
)


@api.exception_handler(RequestError)
async def _refused(request: Request, error: RequestError) -> JSONResponse:
    # A replica's error arrives as a RayTaskError that is also an instance of the original's class.
    refusal = error.cause if isinstance(error, RayTaskError) else error
    kind = refusal.kind if isinstance(refusal, UnusableVideoError) else type(refusal).__name__
    return JSONResponse({"error": kind, "detail": str(refusal)}, status_code=refusal.status_code)


class _Stage:
    """A model deployment's shared setup: its config, torch threads and batch settings."""

    def __init__(self, config: ServeAppConfig) -> None:
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self._run_batch.set_max_batch_size(config.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def models(self) -> dict[str, str]:
        """Model versions of this stage."""
        return self.stage.models

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _run_batch(self, inputs: list[Any]) -> list[Any]:
        # In a thread, so the replica keeps accepting requests (and forming the next batch) meanwhile.
        return await asyncio.to_thread(self.run, inputs)


@serve.deployment(name="Perception", ray_actor_options={"num_cpus": 0.25})
class PerceptionDeployment(_Stage):
    """Decodes uploads and runs the perception stage on batches of decoded clips."""

    def __init__(self, config: ServeAppConfig) -> None:
        super().__init__(config)
        self.stage = PerceptionStage.from_config(config.geolocator)
        self.run = self.stage.perceive

    async def perceive(self, video: bytes, filename: str) -> Perception:
        """One uploaded video's perception; raises `UnusableVideoError` for a file avgeo cannot use."""
        clip = await asyncio.to_thread(decode_upload, video, filename, self.config.geolocator.decode)
        return await self._run_batch(clip)


@serve.deployment(name="Reasoning", ray_actor_options={"num_cpus": 0.25})
class ReasoningDeployment(_Stage):
    """The MLLM, on batches of perceptions."""

    def __init__(self, config: ServeAppConfig) -> None:
        super().__init__(config)
        self.stage = ReasoningStage.from_config(config.geolocator)
        self.run = self.stage.reason

    async def reason(self, perception: Perception) -> Reasoning:
        """One clip's completion, parsed answer and ψ."""
        return await self._run_batch(perception)


@serve.deployment(name="Prediction", ray_actor_options={"num_cpus": 0.25})
class PredictionDeployment(_Stage):
    """The RFM head, on batches of reasonings; draws densities one at a time."""

    def __init__(self, config: ServeAppConfig) -> None:
        super().__init__(config)
        self.stage = PredictionStage.from_config(config.geolocator)
        self.run = self.stage.predict

    async def predict(self, reasoning: Reasoning) -> Prediction:
        """One clip's point estimate, modes and credible regions."""
        return await self._run_batch(reasoning)

    async def density_png(self, reasoning: Reasoning, prediction: Prediction) -> bytes:
        """One clip's density over the globe as PNG bytes."""
        return await asyncio.to_thread(self.stage.density_png, reasoning.psi, prediction.latlon_deg)


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}},
                "required": [UPLOAD_FIELD],
            }
        }
    },
}

_REFUSALS = {
    400: {"description": "no video file in the multipart field `file`"},
    413: {"description": "the upload is over the size limit (`max_upload_mib`)"},
    422: {
        "description": "not a usable video: not a media file, no video or no audio track, truncated, corrupt"
    },
    503: {"description": "overloaded: the request queue is full; retry later"},
}


@serve.deployment(
    name="Ingress", max_ongoing_requests=16, max_queued_requests=64, ray_actor_options={"num_cpus": 0.1}
)
@serve.ingress(api)
class Ingress:
    """The HTTP API: reads uploads and runs the three model deployments in turn."""

    def __init__(
        self,
        perception: DeploymentHandle,
        reasoning: DeploymentHandle,
        prediction: DeploymentHandle,
        config: ServeAppConfig,
    ) -> None:
        self.perception = perception
        self.reasoning = reasoning
        self.prediction = prediction
        self.config = config

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """Model versions ("<name>@<weights fingerprint>") and the inference settings."""
        return {"models": await self._models(), "geolocator": config_to_dict(self.config.geolocator)}

    @api.post("/v1/geolocate", openapi_extra={"requestBody": _UPLOAD_BODY}, responses=_REFUSALS)
    async def geolocate(
        self, request: Request, heatmap: bool = Query(False, description="add a base64 PNG of the density")
    ) -> dict[str, Any]:
        """Where the uploaded video was recorded: point estimate, modes, credible regions, acoustic atoms,
        the reasoning trace, model versions and per-stage timings (seconds)."""
        timings_s: dict[str, float] = {}
        timed = functools.partial(self._timed, timings_s)
        started_s = time.perf_counter()
        upload = await read_upload(request.headers, request.stream(), self.config.max_upload_bytes)
        timings_s["upload"] = time.perf_counter() - started_s
        perception = await timed("perceive", self.perception.perceive, upload.data, upload.filename)
        reasoning = await timed("reason", self.reasoning.reason, perception)
        prediction = await timed("predict", self.prediction.predict, reasoning)
        density_png = None
        if heatmap:
            density_png = await timed("heatmap", self.prediction.density_png, reasoning, prediction)
        timings_s["total"] = time.perf_counter() - started_s
        models = await self._models()
        result = GeolocationResult(perception, reasoning, prediction, models, timings_s).as_dict()
        if density_png is not None:
            result["heatmap_png_base64"] = base64.b64encode(density_png).decode("ascii")
        return result

    async def _models(self) -> dict[str, str]:
        stages = await asyncio.gather(
            *(handle.models.remote() for handle in (self.perception, self.reasoning, self.prediction))
        )
        return {name: version for stage in stages for name, version in stage.items()}

    @staticmethod
    async def _timed(timings_s: dict[str, float], name: str, handle_method: Any, *args: Any) -> Any:
        started_s = time.perf_counter()
        result = await handle_method.remote(*args)
        timings_s[name] = time.perf_counter() - started_s
        return result


def app(args: dict[str, Any]) -> serve.Application:
    """The application from its `args` (a `ServeAppConfig` as a dict; {} runs the tiny models)."""
    config = load_config(ServeAppConfig, args)
    return Ingress.bind(
        PerceptionDeployment.bind(config),
        ReasoningDeployment.bind(config),
        PredictionDeployment.bind(config),
        config,
    )


def run_config(config: dict[str, Any], timeout_s: float = 300.0) -> str:
    """Deploy a Serve config (a parsed serve/config.yaml) on the connected Ray as `serve run` does, wait until
    every application runs, and return the HTTP base URL."""
    schema = ServeDeploySchema.model_validate(config)
    serve.start(http_options=schema.http_options.model_dump())
    # The controller imports each import_path and applies the config, as for `serve run` and `serve deploy`.
    _get_global_client().deploy_apps(schema)
    names = {application.name for application in schema.applications}
    deadline_s = time.monotonic() + timeout_s
    while True:
        statuses = {name: serve.status().applications.get(name) for name in names}
        if all(status is not None and status.status == "RUNNING" for status in statuses.values()):
            return f"http://{schema.http_options.host}:{schema.http_options.port}"
        failed = {
            name: status.message
            for name, status in statuses.items()
            if status is not None and status.status == "DEPLOY_FAILED"
        }
        if failed or time.monotonic() > deadline_s:
            raise RuntimeError(
                f"Serve applications did not start within {timeout_s:g} s: {failed or statuses}"
            )
        time.sleep(1.0)
