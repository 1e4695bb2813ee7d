#!/usr/bin/env bash
# The GPU check of issues 13 and 26: textinv against diffusers' textual-inversion example at SD1.5's shape, 512 px,
# bf16, on random weights (SHAPE=sdxl: SDXL's shape at 1024 px against textual_inversion_sdxl.py); prints steps/s,
# samples/s, peak GPU memory, time to the first step and model-FLOPs utilisation for each program.
#
#   DIFFUSERS_REPO=/path/to/diffusers-clone bench/gpu_check.sh                 # on a CUDA machine
#   DIFFUSERS_REPO=... SHAPE=sdxl bench/gpu_check.sh                           # SDXL, 1024 px (make gpu-check-sdxl)
#   DIFFUSERS_REPO=... bench/gpu_check.sh --peak-tflops 989                    # the card's bf16 peak, if not known
#   DIFFUSERS_REPO=... BATCH_SIZES=1 bench/gpu_check.sh --device cpu --shape small --resolution 64 \
#       --mixed-precision no --steps 4 --warmup 1 --rounds 1 --flops-per-sample 1e9 --peak-tflops 1   # dry run
#
# Arguments after the script's own are passed to bench/train_speed.py and override its defaults here.
# The example script comes from $DIFFUSERS_REPO (a git clone of huggingface/diffusers) at the commit
# train_speed.py names, or from $DIFFUSERS_TI_SCRIPT ($DIFFUSERS_TI_SDXL_SCRIPT for SHAPE=sdxl).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
SHAPE=${SHAPE:-sd15}
if [ "$SHAPE" = sdxl ]; then
    RESOLUTION=${RESOLUTION:-1024}
    BATCH_SIZES=${BATCH_SIZES:-1 4}
    # textinv-offload-gc: the small-card settings (on a GPU the frozen weights are already bf16 under auto)
    PROGRAMS=${PROGRAMS:-textinv,diffusers,textinv-gc,textinv-offload-gc}
else
    RESOLUTION=${RESOLUTION:-512}
    BATCH_SIZES=${BATCH_SIZES:-1 8}
    PROGRAMS=${PROGRAMS:-textinv,diffusers,textinv-gc,textinv-offload-gc}
fi

if [ -z "${DIFFUSERS_REPO:-}${DIFFUSERS_TI_SCRIPT:-}${DIFFUSERS_TI_SDXL_SCRIPT:-}" ]; then
    echo "set DIFFUSERS_REPO to a git clone of huggingface/diffusers (or DIFFUSERS_TI_SCRIPT to the example)" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'PY'
import platform
import accelerate, diffusers, torch, transformers
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"{gpu}; python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
PY
for batch in $BATCH_SIZES; do
    echo
    echo "== batch $batch =="
    "$PYTHON" bench/train_speed.py --shape "$SHAPE" --resolution "$RESOLUTION" --device cuda --mixed-precision bf16 \
        --batch-size "$batch" --steps 30 --warmup 5 --rounds 3 --programs "$PROGRAMS" --no-parts "$@"
done
