"""Train a prediction head with Ray Train (resumable) and register it for evaluation:

`ray job submit --working-dir . -- python jobs/rfm.py --config configs/rfm/tiny.yaml`
"""

from avgeo.cli import job_main
from avgeo.distributed.rfm import RFMJobConfig, run_rfm

if __name__ == "__main__":
    job_main(RFMJobConfig, run_rfm)
