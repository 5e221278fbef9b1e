#!/usr/bin/env bash
# Launch a training or evaluation config under torchrun, on one node or several.
#
#   run_scripts/torchrun.sh train projects/blip2/stage2_opt2.7b.yaml [--options KEY=VALUE ...]
#   run_scripts/torchrun.sh evaluate projects/blip2/eval/vqav2_zeroshot_opt2.7b.yaml
#
# Single node: NPROC processes (default: every GPU nvidia-smi lists).
# Several nodes: run the same command on each with NNODES, NODE_RANK and RDZV_ENDPOINT (host:port of node 0),
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 run_scripts/torchrun.sh train projects/blip2/stage1_vitg.yaml
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29500 run_scripts/torchrun.sh train projects/blip2/stage1_vitg.yaml
# run.batch_size is per process: the global batch is batch_size x accum_steps x NPROC x NNODES (each config
# states the paper's). Training resumes from output_dir/checkpoints/last.pt when it exists. PYTHON picks the
# interpreter (default: python on PATH, e.g. the activated .venv).
set -euo pipefail
if [ $# -lt 2 ] || { [ "$1" != train ] && [ "$1" != evaluate ]; }; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
what=$1; cfg=$2; shift 2
nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$nproc" -ge 1 ] || nproc=1
resume=(); [ "$what" = train ] && resume=(--resume auto)
if [ "${NNODES:-1}" -gt 1 ]; then
  rdzv=(--nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK}" --rdzv_backend=c10d
        --rdzv_endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0}" --rdzv_id="${RDZV_ID:-blip2}")
else
  rdzv=(--standalone)
fi
exec "${PYTHON:-python}" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node="$nproc" -m "framework.$what" --cfg "$cfg" \
  "${resume[@]}" "$@"
