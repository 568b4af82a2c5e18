"""Geotag: `ray job submit --working-dir . -- python jobs/geotag.py --config configs/geotag/tiny.yaml`."""

from avgeo.cli import job_main
from avgeo.distributed.geotag import GeotagConfig, run_geotag

if __name__ == "__main__":
    job_main(GeotagConfig, run_geotag)
