#!/usr/bin/env bash
# Multi-node training with torchrun (static rendezvous), for clusters without SLURM or deepspeed's
# ssh launcher: run the same command on every node, each with its own NODE_RANK (0..NNODES-1).
#
#   NNODES=2 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=10.0.0.1 launchers/torchrun/train.sh --config C --out runs/x
#   NNODES=2 NODE_RANK=1 NPROC_PER_NODE=8 MASTER_ADDR=10.0.0.1 launchers/torchrun/train.sh --config C --out runs/x
#
# MASTER_ADDR is the NODE_RANK=0 host; MASTER_PORT (default 29500) must be free there. The run folder
# must be one shared path: every rank writes its checkpoint shards into it. After an interruption,
# start all nodes again with --resume auto.
set -euo pipefail

exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "${NPROC_PER_NODE:-1}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m dist_optical train "$@"
