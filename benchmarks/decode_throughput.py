"""Single-process decode throughput of `avgeo.data.decode.decode_clip`.

    python benchmarks/decode_throughput.py --manifest data/avg-synth/manifest.parquet --limit 200
    python benchmarks/decode_throughput.py --dir /path/to/mp4s --limit 200 --num-frames 8 --frame-size 224 224

Prints clips/s, sampled frames/s and audio seconds decoded per wall second. The baseline is real time:
"x real time" is seconds of clip decoded per second of wall clock, the ratio a streaming geotagger needs
above 1. Clips that fail to decode are counted by error type, as a job would record them.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from avgeo.data.decode import DecodeConfig, decode_clip
from avgeo.data.errors import DecodeError
from avgeo.data.manifest import read_manifest


def clip_paths(manifest: Path | None, folder: Path | None, pattern: str, limit: int) -> list[str]:
    """The first `limit` clip paths of the manifest (its row order) or of the folder's matches (sorted)."""
    if manifest is not None:
        paths = read_manifest(manifest)["video_path"].to_pylist()
    else:
        paths = sorted(str(path) for path in folder.glob(pattern))
    return paths[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifest", type=Path, help="AVG manifest (Parquet) whose video_path rows to decode"
    )
    source.add_argument("--dir", type=Path, help="folder of clips to decode")
    parser.add_argument("--pattern", default="*.mp4", help="which files of --dir to decode (glob)")
    parser.add_argument("--limit", type=int, default=100, help="decode at most this many clips")
    parser.add_argument("--num-frames", type=int, default=DecodeConfig.num_frames)
    parser.add_argument("--fps", type=float, default=None, help="sample at this rate instead of --num-frames")
    parser.add_argument(
        "--frame-size", type=int, nargs=2, default=DecodeConfig.frame_size, metavar=("H", "W")
    )
    args = parser.parse_args()

    config = DecodeConfig(num_frames=args.num_frames, fps=args.fps, frame_size=tuple(args.frame_size))
    paths = clip_paths(args.manifest, args.dir, args.pattern, args.limit)
    if not paths:
        parser.error(f"no clips found in {args.manifest or args.dir}")

    errors: collections.Counter[str] = collections.Counter()
    num_frames = 0
    audio_s = video_s = 0.0
    start = time.perf_counter()
    for path in paths:
        try:
            clip = decode_clip(path, config)
        except DecodeError as exc:
            errors[type(exc).__name__] += 1
            continue
        num_frames += len(clip.frames)
        audio_s += len(clip.audio) / clip.sample_rate
        video_s += clip.duration_s
    wall_s = time.perf_counter() - start

    num_decoded = len(paths) - sum(errors.values())
    print(f"decoded {num_decoded} of {len(paths)} clips in {wall_s:.2f} s ({config})")
    print(f"  {num_decoded / wall_s:.1f} clips/s, {num_frames / wall_s:.1f} frames/s")
    print(
        f"  {audio_s / wall_s:.1f} audio s/s; baseline real time 1.0 s/s: {video_s / wall_s:.1f}x real time"
    )
    for name, count in sorted(errors.items()):
        print(f"  {name}: {count}")


if __name__ == "__main__":
    main()
