"""Typed errors for bad clips and bad manifests; each message names the file (or row) and the fix.

`DecodeError` and `ManifestError` subclass `ValueError`, so callers that only care about "bad input" can
catch that, while a job that turns a corrupt video into an output row can record `type(err).__name__`.
"""

from __future__ import annotations

from pathlib import Path


class DecodeError(ValueError):
    """A clip cannot be decoded as audiovisual input; `.path` is the offending file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Rebuilt from both arguments, so the error survives pickling across Ray tasks and Serve hops.
        return type(self), (self.path, self.problem)


class MissingFileError(DecodeError):
    """The path does not exist or is not a regular file."""


class NotAVideoError(DecodeError):
    """The file is not a media container FFmpeg can open, or is a still image."""


class NoVideoStreamError(DecodeError):
    """The container holds no video stream (e.g. an audio-only .m4a)."""


class NoAudioStreamError(DecodeError):
    """The container holds no audio stream and the caller requires synchronized audio."""


class EmptyClipError(DecodeError):
    """The file has zero bytes, or its video stream has no frames."""


class TruncatedFileError(DecodeError):
    """The file ends before the data its header announces (an interrupted download or copy)."""


class CorruptStreamError(DecodeError):
    """A stream's data fails to decode part-way although the container is complete."""


class ManifestError(ValueError):
    """A manifest violates the AVG schema; the message names the column or the first bad row."""
