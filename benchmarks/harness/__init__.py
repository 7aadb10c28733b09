"""What the benchmark scripts share: workers in subprocesses, clocks and memory probes, versions and reports.

A script declares a `Bench` (its arms and what they are called), builds its model and data, and calls
`repeats` and `write_report`; each arm is a function from the run's settings to its record. Lightning
helpers for the alignsuite arms are in `benchmarks.harness.lightning_arm`, imported by those arms only.
Only the standard library is imported here.
"""

from benchmarks.harness.driver import (
    Bench,
    main,
    parse_args,
    parser,
    repeats,
    scratch,
    versions,
    write_report,
)
from benchmarks.harness.figures import (
    best_of_repeats,
    contended,
    first_losses,
    median_or_none,
    pairs_per_s,
    ratios,
    step_ms,
    throughput,
)
from benchmarks.harness.flops import bf16_peak_tflops, dpo_step_flops, utilisation
from benchmarks.peers import PINNED, check_version, import_path
from benchmarks.harness.measure import MemoryProbe, StepClock, StepProfiler, cuda_sync, gpu_name, wait_for_idle

__all__ = [
    "write_report",
    "PINNED",
    "check_version",
    "import_path",
    "Bench",
    "MemoryProbe",
    "StepClock",
    "StepProfiler",
    "best_of_repeats",
    "bf16_peak_tflops",
    "dpo_step_flops",
    "contended",
    "cuda_sync",
    "first_losses",
    "gpu_name",
    "main",
    "median_or_none",
    "pairs_per_s",
    "parse_args",
    "parser",
    "ratios",
    "repeats",
    "scratch",
    "step_ms",
    "throughput",
    "utilisation",
    "versions",
    "wait_for_idle",
]
