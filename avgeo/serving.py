"""Request handling for the geolocation endpoint (`serve/app.py`), without Ray: the app's config, bounded
multipart uploads, decoding an uploaded video, and which HTTP status each kind of bad request gets.

An upload is read as the body arrives and refused with 413 as soon as it passes the limit, whatever the
client announced; a `Content-Length` over the limit is refused before any of the body is read. The file
part is spooled to a temporary file by Starlette's multipart parser (kept in memory up to 1 MiB). The
bytes then travel to the perception replica, which may run on another node, and are decoded there from
a temporary file of its own that is deleted once decoded. A request names no path on the server: the
uploaded file name only labels the result and the error messages.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from avgeo.data.decode import DecodeConfig, DecodedClip, decode_clip
from avgeo.data.errors import DecodeError
from avgeo.pipeline import GeolocatorConfig

UPLOAD_FIELD = "file"
"""Name of the multipart form field that carries the video."""

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Bytes a request body may hold beyond the upload limit: multipart boundaries and part headers."""

_MAX_NAME_CHARS = 200


@dataclass
class ServeAppConfig:
    """The endpoint's settings (the `args` of the Serve application); replicas and resources per
    deployment are Serve's own `deployments` settings in serve/config.yaml."""

    geolocator: GeolocatorConfig = field(default_factory=GeolocatorConfig)
    """Models and inference settings, shared by the three model deployments."""
    max_upload_mib: float = 256.0
    """Largest accepted video upload, MiB (2^20 bytes); larger uploads get 413."""
    max_batch_size: int = 8
    """Most requests a model deployment runs in one batch."""
    batch_wait_timeout_s: float = 0.01
    """How long a model deployment waits for a batch to fill before running a partial one, seconds."""
    torch_threads: int = 1
    """torch intra-op threads per replica (1 suits several small replicas sharing a few cores)."""

    def __post_init__(self) -> None:
        if not self.max_upload_mib > 0:
            raise ValueError(f"max_upload_mib must be > 0, got {self.max_upload_mib}")
        if self.max_batch_size < 1 or self.torch_threads < 1:
            raise ValueError("max_batch_size and torch_threads must be at least 1")
        if self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return round(self.max_upload_mib * 2**20)


class RequestError(ValueError):
    """A request the endpoint refuses; `status_code` is its HTTP status, the message says what to fix."""

    status_code = 400


class MissingUploadError(RequestError):
    """The request carries no video file in the `file` field of a multipart form."""


class UploadTooLargeError(RequestError):
    """The upload exceeds the configured limit."""

    status_code = 413


class UnusableVideoError(RequestError):
    """The upload is not a clip avgeo can use; `kind` names the `DecodeError` subclass that says why.

    Unlike `DecodeError`s, it pickles, so it reaches the ingress from the replica that decoded the upload.
    """

    status_code = 422

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.kind, str(self))


@dataclass
class Upload:
    """A received video file."""

    filename: str
    """The client's file name, without directories ("upload" when the client gave none)."""
    data: bytes
    """The file's bytes."""


async def read_upload(headers: Mapping[str, str], body: AsyncIterator[bytes], max_bytes: int) -> Upload:
    """The video in the `file` field of a multipart request; refused early past `max_bytes` (module doc)."""
    headers = Headers(headers=dict(headers))
    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise MissingUploadError(
            f"expected a multipart/form-data upload with the video in the field {UPLOAD_FIELD!r} "
            f"(got content type {content_type or 'none'!r}); e.g. curl -F {UPLOAD_FIELD}=@clip.mp4"
        )
    max_body_bytes = max_bytes + MULTIPART_OVERHEAD_BYTES
    announced = headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > max_body_bytes:
        raise _too_large(max_bytes)
    parser = MultiPartParser(headers, _capped(body, max_body_bytes, max_bytes), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MissingUploadError(f"the multipart body cannot be read ({exc}); send one video file") from exc
    upload = form.get(UPLOAD_FIELD)
    if not isinstance(upload, UploadFile):
        raise MissingUploadError(
            f"no file in the form field {UPLOAD_FIELD!r}; send the video as {UPLOAD_FIELD}=@clip.mp4"
        )
    try:
        if upload.size is not None and upload.size > max_bytes:
            raise _too_large(max_bytes)
        return Upload(_safe_name(upload.filename), await upload.read())
    finally:
        await upload.close()


def decode_upload(video: bytes, filename: str, config: DecodeConfig) -> DecodedClip:
    """Decode an uploaded video from a temporary file (deleted afterwards).

    Raises `UnusableVideoError` naming `filename` and the problem for any file `decode_clip` refuses.
    """
    with tempfile.NamedTemporaryFile(prefix="avgeo-upload-", suffix=_safe_suffix(filename)) as temp:
        temp.write(video)
        temp.flush()
        try:
            clip = decode_clip(temp.name, config)
        except DecodeError as exc:
            problem = str(exc).removeprefix(f"{exc.path}: ")
            raise UnusableVideoError(type(exc).__name__, f"{filename}: {problem}") from None
    clip.path = filename
    return clip


async def _capped(body: AsyncIterator[bytes], max_body_bytes: int, max_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > max_body_bytes:
            raise _too_large(max_bytes)
        yield chunk


def _too_large(max_bytes: int) -> UploadTooLargeError:
    return UploadTooLargeError(
        f"the upload is over the {max_bytes / 2**20:g} MiB limit; send a shorter or more compressed clip "
        "(the limit is max_upload_mib in serve/config.yaml)"
    )


def _safe_name(filename: str | None) -> str:
    # Only the last path component, so a name like "../../etc/passwd" labels a result and nothing more.
    name = Path((filename or "").replace("\\", "/")).name.strip()
    return name[:_MAX_NAME_CHARS] or "upload"


def _safe_suffix(filename: str) -> str:
    suffix = Path(filename).suffix
    return suffix if 1 < len(suffix) <= 8 and suffix[1:].isalnum() else ""
