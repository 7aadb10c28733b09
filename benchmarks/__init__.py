"""Side-by-side benchmarks against peer projects, run by hand from the repository root as modules:

    python -m benchmarks.bench_dpo_vs_trl --help
    python -m benchmarks.bench_diffusion_dpo --help

Each script holds its arms (what one framework does per step) and its defaults; `benchmarks.harness`
holds what they share (workers, clocks, memory probes, versions, reports).
"""
