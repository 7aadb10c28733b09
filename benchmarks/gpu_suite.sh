#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go, on one CUDA device, from the repository root:
#
#     bash benchmarks/gpu_suite.sh OUTDIR                  # every section, in the order below
#     bash benchmarks/gpu_suite.sh OUTDIR dpo long         # some of them
#
# Each section writes OUTDIR/<section>.json (the benchmark's report) and OUTDIR/<section>.log, and is cut off
# after its time limit (SECTION_TIMEOUT seconds, default 420) so that one stall does not take the others' time.
# The TRL arm imports the pinned TRL (benchmarks/peers.py) from benchmarks/.peers/, installed there by
# `python -m benchmarks.peers`; liger-kernel (the Liger sections) goes into the environment. A node without
# network installs them from wheels made elsewhere:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#         -d wheels trl==1.16.0 liger-kernel==0.8.5
#     pip install --no-deps --target benchmarks/.peers/trl-1.16.0 wheels/trl-1.16.0-*.whl
#
# Sections (all bf16 autocast over float32 weights, random-init models of real checkpoints' shapes):
#   tests      python -m pytest -m gpu: CUDA scores against the CPU, a bf16 fit, Diffusion-DPO on the GPU
#   dpo        DPO vs TRL, Qwen2.5-0.5B shape, full fine-tuning, 1024-token rows, batch 8: pairs/s, GPU peak, MFU
#   lora       the same with LoRA r16 on every linear layer (reference: adapters off)
#   flex       the same as dpo, alignsuite's packed rows under flex attention's block mask
#   liger      the same as dpo, TRL with its Liger fused loss (use_liger_kernel)
#   dpo15      DPO vs TRL, Qwen2.5-1.5B shape, full fine-tuning, batch 4
#   long       8,192-token rows, vocabulary 151,936, batch 1: GPU peak of alignsuite's chunked head vs TRL's logits
#   longliger  the same, TRL with Liger
#   diffusion  Diffusion-DPO vs the diffusers-style loop at SD-1.5 scale (860M UNet, 512 px), with and without
#              the encoding cache
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR [SECTION ...]}
shift
mkdir -p "$out"
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(tests dpo lora flex liger dpo15 long longliger diffusion)
limit=${SECTION_TIMEOUT:-420}
export PYTHONUNBUFFERED=1

dpo=(python -m benchmarks.bench_dpo_vs_trl --device cuda --bf16 --quiet)
qwen05=(--size qwen2.5-0.5b --max-length 1024 --batch-size 8 --steps 25 --warmup 5)
long=(--size qwen2.5-0.5b --max-length 8192 --batch-size 1 --steps 5 --warmup 2 --lm-head-chunk 4096)

run() {  # run SECTION COMMAND...: the command's report to OUTDIR/SECTION.json, its output to SECTION.log
  local name=$1
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

has_liger() {
  python -c "import liger_kernel" 2>/dev/null || { echo "=== $1: skipped, liger-kernel is not installed"; return 1; }
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for section in "${sections[@]}"; do
  case $section in
    tests) run tests python -m pytest -m gpu -n 0 -q ;;
    dpo) run dpo "${dpo[@]}" "${qwen05[@]}" --out "$out/dpo.json" ;;
    lora) run lora "${dpo[@]}" "${qwen05[@]}" --lora --out "$out/lora.json" ;;
    flex) run flex "${dpo[@]}" "${qwen05[@]}" --alignsuite-attn flex_attention --out "$out/flex.json" ;;
    liger) has_liger liger && run liger "${dpo[@]}" "${qwen05[@]}" --trl-liger --out "$out/liger.json" ;;
    dpo15) run dpo15 "${dpo[@]}" --size qwen2.5-1.5b --max-length 1024 --batch-size 4 --steps 20 --warmup 5 \
      --out "$out/dpo15.json" ;;
    long) run long "${dpo[@]}" "${long[@]}" --out "$out/long.json" ;;
    longliger) has_liger longliger && run longliger "${dpo[@]}" "${long[@]}" --trl-liger --out "$out/longliger.json" ;;
    diffusion) run diffusion python -m benchmarks.bench_diffusion_dpo --device cuda --sd15 --resolution 512 \
      --batch-size 4 --steps 12 --warmup 3 --quiet --out "$out/diffusion.json" ;;
    *) echo "unknown section $section: choose from tests dpo lora flex liger dpo15 long longliger diffusion"; exit 2 ;;
  esac
done
