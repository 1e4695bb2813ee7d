#!/usr/bin/env bash
# The GPU check of issue 22: one SD3.5-medium-shaped and one Flux.1-dev-shaped training step on random weights, the
# way users run them (bf16 weights, gradient checkpointing, cached latents, T5 run once per prompt and offloaded to
# the CPU after), at 512 and 1024 px: seconds per step and the allocator's peak GPU memory; plus diffusers' advanced
# Flux script in pure textual-inversion mode beside textinv when DIFFUSERS_REPO is set. Not run yet: this task had
# no GPU. Building the full-depth models takes a few minutes of CPU and ~40 GB of disk in /tmp.
#
#   bench/gpu_check_flow.sh                               # on a CUDA machine with >= 48 GB (Flux.1-dev full depth)
#   DIFFUSERS_REPO=/path/to/diffusers-clone bench/gpu_check_flow.sh
#   FLUX_BLOCKS=3,6 bench/gpu_check_flow.sh               # a smaller card: Flux extrapolated from 3 and 6 blocks
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
EXTRA=()
[ -n "${DIFFUSERS_REPO:-}" ] && EXTRA+=(--diffusers-repo "$DIFFUSERS_REPO")
for px in 512 1024; do
    echo "== ${px} px =="
    "$PYTHON" bench/flow_step.py --device cuda --resolution "$px" --steps 6 --rounds 2 --t5-layers 24 \
        --shape sd3.5-medium --blocks 24 "${EXTRA[@]}"
    "$PYTHON" bench/flow_step.py --device cuda --resolution "$px" --steps 6 --rounds 2 --t5-layers 24 \
        --shape flux-dev --blocks "${FLUX_BLOCKS:-57}" "${EXTRA[@]}"
    "$PYTHON" bench/flow_step.py --device cuda --resolution "$px" --steps 6 --rounds 2 --t5-layers 24 --train-t5 \
        --shape flux-dev --blocks "${FLUX_BLOCKS:-57}" "${EXTRA[@]}"
done
