"""The `avgeo` command line: one subcommand per job, each a thin door to one library function.

Imports happen inside each subcommand so `avgeo --help` stays instant and a job pulls in only what it uses.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

JOBS: dict[str, str] = {
    "mart": "avgeo.distributed.mart:MartConfig:run_mart",
    "embed": "avgeo.distributed.embed:EmbedConfig:run_embed",
    "rfm": "avgeo.distributed.rfm:RFMJobConfig:run_rfm",
    "evaluate": "avgeo.distributed.evaluate:EvaluateConfig:run_evaluate",
    "grpo": "avgeo.distributed.grpo:GRPOConfig:run_grpo",
    "geotag": "avgeo.distributed.geotag:GeotagConfig:run_geotag",
}
"""Job subcommands: name -> "module:ConfigClass:run_function"; `jobs/<name>.py` runs the same function."""

OWN_FORM_JOBS = ("geotag",)
"""Jobs whose subcommand has its own arguments besides --config and --set (the same config underneath)."""


def _synth(args: argparse.Namespace) -> None:
    from avgeo.data.synth import run_synth, synth_preset

    config = synth_preset(args.preset)
    if args.workers is not None:
        config.num_workers = args.workers
    manifest = run_synth(config, args.out, seed=args.seed)
    print(f"manifest: {manifest}")


def _demo(args: argparse.Namespace) -> None:
    from avgeo.demo import run_demo

    run_demo(args.out, seed=args.seed)


def _geotag(args: argparse.Namespace) -> None:
    from avgeo.distributed.geotag import GeotagConfig, run_geotag

    # Not through --set: INPUT and OUT are paths, which YAML would misread (a glob like `[ab]*.mp4`).
    fixed = {"input": args.input, "out_dir": str(args.out)}
    if args.heatmaps:
        fixed["heatmaps"] = True
    run_job(GeotagConfig, run_geotag, args, **fixed)


def add_job_arguments(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        required=config_required,
        help="the job's YAML config" + ("" if config_required else " (default: the tiny models)"),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (dotted key; VALUE parsed as YAML), repeatable",
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """["train.lr=1e-3", "name=x"] -> {"train.lr": 0.001, "name": "x"}; values are parsed as YAML."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_job(config_cls: type, run: Callable[[Any], Any], args: argparse.Namespace, **fixed: Any) -> Any:
    """Load and validate the config named on the command line, then run the job's library function.

    `fixed` sets config keys from the subcommand's own arguments, over the file and `--set`. A bad config
    ends the process with the error's message (exit status 2), not a traceback.
    """
    from avgeo.config import ConfigError, load_config

    try:
        config = load_config(config_cls, args.config, **{**parse_overrides(args.overrides), **fixed})
    except ConfigError as err:
        print(f"{args.config or args.command}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return run(config)


def job_main(config_cls: type, run: Callable[[Any], Any], argv: list[str] | None = None) -> Any:
    """The whole of `jobs/<name>.py`: the same door as `avgeo <name>`, for `ray job submit`."""
    parser = argparse.ArgumentParser(description=(run.__doc__ or "").strip().splitlines()[0])
    add_job_arguments(parser)
    return run_job(config_cls, run, parser.parse_args(argv))


def _job(args: argparse.Namespace) -> None:
    module_name, config_name, run_name = JOBS[args.command].split(":")
    module = importlib.import_module(module_name)
    run_job(getattr(module, config_name), getattr(module, run_name), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avgeo", description="Audiovisual geolocation of video.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="generate the avg-synth benchmark (mp4s + Parquet manifest)")
    synth.add_argument("--preset", choices=("ci", "demo", "full"), default="ci", help="benchmark size")
    synth.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same benchmark")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: the preset's)")
    synth.set_defaults(run=_synth)

    demo = commands.add_parser("demo", help="run the embedded default end to end (what `make demo` runs)")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(run=_demo)

    for name in JOBS:
        if name in OWN_FORM_JOBS:
            continue
        job = commands.add_parser(name, help=f"run the {name} job (as jobs/{name}.py does)")
        add_job_arguments(job)
        job.set_defaults(run=_job)

    geotag = commands.add_parser(
        "geotag", help="geotag every video of a folder, glob or manifest (as jobs/geotag.py does)"
    )
    geotag.add_argument("input", help="folder, glob or manifest (.parquet/.csv), local or a URI (s3://…)")
    geotag.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    geotag.add_argument("--heatmaps", action="store_true", help="also write a density PNG per clip")
    add_job_arguments(geotag, config_required=False)
    geotag.set_defaults(run=_geotag)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
