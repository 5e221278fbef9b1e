#!/usr/bin/env bash
# Real-size training steps per memory strategy (as the config, LoRA, int8, nf4; FSDP with NPROC > 1) on CUDA
# GPUs, against the dry run's estimate: samples/s and peak memory, JSON in benchmarks/results/gpu_check.json. Run
# it where a GPU is (random weights: no weight file or download needed); its Python part runs on the CPU in
# tests/test_gpu_check.py.
#   [NPROC=8] bash benchmarks/gpu_check.sh [--configs ...] [--variants config lora int8 nf4 fsdp] [--batch-size 8]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: this check is for a GPU machine')"
"$python" -c "import bitsandbytes" 2>/dev/null || echo "bitsandbytes is not installed: int8 and nf4 are recorded as skipped"
if [ "${NPROC:-1}" -gt 1 ]; then  # the fsdp variant shards over NPROC GPUs; the others run on each
  exec "$python" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" benchmarks/gpu_check.py --device cuda "$@"
fi
exec "$python" benchmarks/gpu_check.py --device cuda "$@"
