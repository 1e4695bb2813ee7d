#!/usr/bin/env bash
# The GPU check of issue 13: textinv against diffusers' textual-inversion example at SD1.5's shape, 512 px, bf16,
# on random weights; prints steps/s, samples/s, peak GPU memory and model-FLOPs utilisation for each program.
#
#   DIFFUSERS_REPO=/path/to/diffusers-clone bench/gpu_check.sh                 # on a CUDA machine
#   DIFFUSERS_REPO=... bench/gpu_check.sh --peak-tflops 989                    # the card's bf16 peak, if not known
#   DIFFUSERS_REPO=... BATCH_SIZES=1 bench/gpu_check.sh --device cpu --shape small --resolution 64 \
#       --mixed-precision no --steps 4 --warmup 1 --rounds 1 --flops-per-sample 1e9 --peak-tflops 1   # dry run
#
# Arguments after the script's own are passed to bench/train_speed.py and override its defaults here.
# The example script comes from $DIFFUSERS_REPO (a git clone of huggingface/diffusers) at the commit
# train_speed.py names, or from $DIFFUSERS_TI_SCRIPT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BATCH_SIZES=${BATCH_SIZES:-1 8}

if [ -z "${DIFFUSERS_REPO:-}${DIFFUSERS_TI_SCRIPT:-}" ]; then
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
    "$PYTHON" bench/train_speed.py --shape sd15 --resolution 512 --device cuda --mixed-precision bf16 \
        --batch-size "$batch" --steps 30 --warmup 5 --rounds 3 --programs textinv,diffusers,textinv-gc --no-parts "$@"
done
