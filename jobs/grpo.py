"""Finetune the MLLM with GRPO on Ray (rollout workers, learner group, reference, rewards), resumable:

`ray job submit --working-dir . -- python jobs/grpo.py --config configs/grpo/tiny.yaml`
"""

from avgeo.cli import job_main
from avgeo.distributed.grpo import GRPOConfig, run_grpo

if __name__ == "__main__":
    job_main(GRPOConfig, run_grpo)
