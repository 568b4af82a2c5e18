"""Embed: `ray job submit --working-dir . -- python jobs/embed.py --config configs/embed/tiny.yaml`."""

from avgeo.cli import job_main
from avgeo.distributed.embed import EmbedConfig, run_embed

if __name__ == "__main__":
    job_main(EmbedConfig, run_embed)
