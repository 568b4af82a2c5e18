"""Score every registered model and write the method's tables (Markdown + JSON):

`ray job submit --working-dir . -- python jobs/evaluate.py --config configs/evaluate/tiny.yaml`
"""

from avgeo.cli import job_main
from avgeo.distributed.evaluate import EvaluateConfig, run_evaluate

if __name__ == "__main__":
    job_main(EvaluateConfig, run_evaluate)
