"""`retain_freed_memory`: a freed model-batch-sized block is reused, not faulted in again page by page."""

from __future__ import annotations

import subprocess
import sys

# Runs in its own interpreter: the settings are process-wide and would outlive this test otherwise.
FAULTS_OF_A_REFILL = """
import resource

from avgeo.distributed.allocator import retain_freed_memory

def faults_of_a_refill() -> int:
    block = b"x" * (64 << 20)  # a 64 MiB block, written through, then freed
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"x" * (64 << 20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_a_refill()
assert retain_freed_memory()
faults_of_a_refill()  # the first block after the change grows the heap
print(default, faults_of_a_refill())
"""


def test_a_freed_block_is_reused_once_freed_memory_is_retained():
    completed = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_REFILL], capture_output=True, text=True, check=True
    )
    default, retained = map(int, completed.stdout.split())
    pages = (64 << 20) // 4096
    # glibc maps a block this large on its own and unmaps it when freed: every page faults again.
    assert default >= pages * 0.9
    assert retained < pages * 0.05
