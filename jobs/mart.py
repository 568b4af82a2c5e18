"""MART: `ray job submit --working-dir . -- python jobs/mart.py --config configs/mart/tiny.yaml`."""

from avgeo.cli import job_main
from avgeo.distributed.mart import MartConfig, run_mart

if __name__ == "__main__":
    job_main(MartConfig, run_mart)
