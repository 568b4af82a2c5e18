"""`make demo`: the embedded default end to end on the avg-synth `demo` preset (`run_demo`).

config.py  the per-step budgets (`DemoConfig`)
steps.py   running steps in order, timed, skipping those an earlier run finished
paths.py   where each step writes under the output folder
run.py     the steps: each one job's library function on its `configs/<job>/tiny.yaml`
report.py  the combined Table 1 / Table 3, the ablation, the geotag rows, where the files are
"""

from avgeo.demo.config import DemoConfig
from avgeo.demo.run import run_demo

__all__ = ["DemoConfig", "run_demo"]
