"""What a benchmark's arms train on, built once by its driver and read by every arm: `tiny_llama` for
``bench_dpo_vs_trl``, `tiny_sd` for ``bench_diffusion_dpo``."""
