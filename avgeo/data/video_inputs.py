"""What to geotag: a folder, a glob or a manifest of videos, on local disk or any filesystem pyarrow knows.

`list_videos(source)` turns the user's INPUT into a table of `clip_id` and `video_path`, one row per video:

- a folder: every file below it (recursively) whose suffix is in `VIDEO_SUFFIXES`, hidden ones left out;
- a glob (`*`, `?` or `[` in the path; `**` crosses folders): every file it matches, whatever its suffix;
- a manifest, a `.parquet` or `.csv` file with a `video_path` column (an AVG manifest is one): its rows in
  order; relative paths are resolved against the manifest's folder.

`clip_id` is the manifest's `clip_id` column where it has one, else the video's full path or URI, so the
same INPUT always gives the same ids (the geotag job resumes by them). Local paths come back absolute;
anything else stays a URI that `pyarrow.fs.FileSystem.from_uri` resolves (`s3://bucket/key`, `gs://…`).
`local_video(video_path)` hands the decoder a local file: the path itself on local disk, else a temporary
copy that is deleted afterwards.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".mpg", ".mpeg", ".flv", ".3gp", ".ogv"}
)
"""File suffixes (lower case) a folder INPUT lists; globs and manifests list whatever they name."""

MANIFEST_SUFFIXES = (".parquet", ".csv")
"""An INPUT ending in one of these (and without glob characters) is a manifest."""

INPUT_SCHEMA = pa.schema(
    [pa.field("clip_id", pa.string(), nullable=False), pa.field("video_path", pa.string(), nullable=False)]
)
"""`list_videos`' table."""

_GLOB_CHARS = re.compile(r"[*?\[]")


class VideoInputError(ValueError):
    """An INPUT names nothing to geotag, or a manifest is unusable; the message names it and the fix."""


def list_videos(source: str | Path) -> pa.Table:
    """The videos an INPUT names, as `INPUT_SCHEMA` rows (see the module docstring for the three forms)."""
    source = str(source)
    if _GLOB_CHARS.search(source):
        rows = _glob(source)
    elif source.lower().endswith(MANIFEST_SUFFIXES):
        return _manifest(source)
    else:
        rows = _folder(source)
    if not rows:
        raise VideoInputError(
            f"{source}: no videos found; give a folder of videos ({', '.join(sorted(VIDEO_SUFFIXES))}), "
            "a glob that matches files, or a manifest (.parquet/.csv with a video_path column)"
        )
    return pa.table({"clip_id": rows, "video_path": rows}, schema=INPUT_SCHEMA)


@contextmanager
def local_video(video_path: str) -> Iterator[str]:
    """A local path holding `video_path`'s bytes: the file itself on local disk, else a temporary copy.

    Raises FileNotFoundError when a remote file does not exist.
    """
    filesystem, path = _filesystem(video_path)
    if isinstance(filesystem, pafs.LocalFileSystem):
        yield path
        return
    with fetched(filesystem, path) as local_path:
        yield local_path


@contextmanager
def fetched(filesystem: pafs.FileSystem, path: str) -> Iterator[str]:
    """A temporary local copy of `path` on `filesystem` (same suffix, so decoders can tell the container)."""
    suffix = posixpath.splitext(path)[1]
    with tempfile.NamedTemporaryFile(prefix="avgeo-video-", suffix=suffix) as local:
        with filesystem.open_input_stream(path) as remote:
            shutil.copyfileobj(remote, local)
        local.flush()
        yield local.name


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a URI or a local path (relative ones resolved against the cwd)."""
    if "://" in location:
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise VideoInputError(f"{location}: pyarrow cannot open this URI ({exc})") from exc
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def _location(source: str, filesystem: pafs.FileSystem, path: str) -> str:
    """A path on `source`'s filesystem, written the way `source` was: a local path or a URI."""
    if isinstance(filesystem, pafs.LocalFileSystem) and "://" not in source:
        return path
    scheme = source.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/')}" if scheme != "file" else f"file://{path}"


def _folder(source: str) -> list[str]:
    filesystem, path = _filesystem(source)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise VideoInputError(
            f"{source}: not a folder, a glob or a manifest (.parquet/.csv); check the path"
            if info.type == pafs.FileType.NotFound
            else f"{source}: a file but not a manifest; give its folder, a glob, or a .parquet/.csv manifest"
        )
    selector = pafs.FileSelector(path, recursive=True)
    return sorted(
        _location(source, filesystem, file.path)
        for file in filesystem.get_file_info(selector)
        if file.type == pafs.FileType.File
        and posixpath.splitext(file.path)[1].lower() in VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in posixpath.relpath(file.path, path).split("/"))
    )


def _glob(source: str) -> list[str]:
    filesystem, pattern = _filesystem(source)
    # List from the deepest folder without glob characters, then match the whole path.
    parts = pattern.split("/")
    first_glob = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
    base = "/".join(parts[:first_glob]) or "/"
    recursive = "**" in pattern or first_glob < len(parts) - 1
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        raise VideoInputError(f"{source}: the folder {base} does not exist; check the glob")
    regex = _glob_regex(pattern)
    return sorted(
        _location(source, filesystem, file.path)
        for file in filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive))
        if file.type == pafs.FileType.File and regex.fullmatch(file.path)
    )


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*`, `?` and `[…]` match within one folder; `**/` spans any number of folders (as pathlib's glob)."""
    pieces, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            pieces.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            pieces.append(".*")
            index += 2
        elif pattern[index] in "*?":
            pieces.append("[^/]*" if pattern[index] == "*" else "[^/]")
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 2 :]:
            end = pattern.index("]", index + 2)
            members = pattern[index + 1 : end]
            pieces.append(f"[{'^' + members[1:] if members.startswith('!') else members}]")
            index = end + 1
        else:
            pieces.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(pieces))


def _manifest(source: str) -> pa.Table:
    filesystem, path = _filesystem(source)
    try:
        if path.lower().endswith(".csv"):
            with filesystem.open_input_stream(path) as stream:
                table = pv.read_csv(stream)
        else:
            table = pq.read_table(path, filesystem=filesystem)
    except FileNotFoundError:
        raise VideoInputError(f"{source}: manifest not found; check the path") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise VideoInputError(f"{source}: not a readable manifest ({exc})") from exc
    if "video_path" not in table.column_names:
        raise VideoInputError(
            f"{source}: the manifest has no video_path column (columns: {', '.join(table.column_names)}); "
            "add one naming each video"
        )
    paths = table["video_path"].cast(pa.string())
    if paths.null_count:
        raise VideoInputError(f"{source}: {paths.null_count} rows have no video_path; fill or drop them")
    folder = posixpath.dirname(path)
    video_paths = [
        p if "://" in p else _location(source, filesystem, posixpath.normpath(posixpath.join(folder, p)))
        for p in paths.to_pylist()
    ]
    has_ids = "clip_id" in table.column_names
    clip_ids = table["clip_id"].cast(pa.string()) if has_ids else pa.array(video_paths, pa.string())
    if pc.count_distinct(clip_ids).as_py() < table.num_rows or clip_ids.null_count:
        raise VideoInputError(f"{source}: clip_id must be set and unique on every row; fix the manifest")
    if not video_paths:
        raise VideoInputError(f"{source}: the manifest has no rows")
    return pa.table({"clip_id": clip_ids, "video_path": video_paths}, schema=INPUT_SCHEMA)
