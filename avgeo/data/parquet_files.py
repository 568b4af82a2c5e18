"""Parquet files written whole or not at all, and the folder listings that read them back.

A job that resumes by what its output folder holds must never count a half-written file: the data goes
to a hidden temp file in the same folder and is renamed into place, and listings leave hidden files out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet_atomically(table: pa.Table, path: str | Path) -> Path:
    """Write `table` to `path` via a hidden temp file and a rename; a reader sees all of it or nothing."""
    with _replacing(path) as temp_path:
        pq.write_table(table, temp_path)
    return Path(path)


def write_bytes_atomically(data: bytes, path: str | Path) -> Path:
    """`data` to `path` via a hidden temp file and a rename (e.g. a PNG beside the Parquet files)."""
    with _replacing(path) as temp_path:
        temp_path.write_bytes(data)
    return Path(path)


def parquet_files(folder: str | Path) -> list[Path]:
    """Every `*.parquet` file below `folder` (any depth, e.g. partition folders), sorted, leaving out
    hidden files and folders (in-progress temp files). Empty when `folder` does not exist."""
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*.parquet")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


@contextmanager
def _replacing(path: str | Path) -> Iterator[Path]:
    """A hidden temp path beside `path`, renamed onto `path` when the block succeeds, else deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600); this one gets the umask's permissions like any other.
    temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temp_path
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
