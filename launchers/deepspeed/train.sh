#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher, for clusters without SLURM. Any train argument
# after the script name: --config FILE --out DIR [--resume auto] [key=value ...]
#
# ssh mode, from the head node (pdsh + passwordless ssh to every host in the hostfile):
#   HOSTFILE=launchers/deepspeed/hostfile.example launchers/deepspeed/train.sh --config C --out runs/x
# no-ssh mode, the same command on every node with its own NODE_RANK and the rank-0 node's address:
#   HOSTFILE=H NODE_RANK=1 MASTER_ADDR=10.0.0.1 launchers/deepspeed/train.sh --config C --out runs/x
#
# The working directory, python and run folder must be the same paths on every node (shared FS).
# ssh sessions do not inherit this shell's environment: deepspeed forwards PYTHON*/NCCL*/UCX* itself
# and whatever .deepspeed_env lists; this script writes that file (to a temp path, via DS_ENV_FILE)
# from the variables named in DS_ENV_VARS that are set here.
set -euo pipefail

hostfile=${HOSTFILE:?set HOSTFILE (see launchers/deepspeed/hostfile.example)}
# --no_local_rank: the trainer reads LOCAL_RANK from the environment, not from argv.
args=(--hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}" --no_local_rank --module)
if [[ -n ${NODE_RANK:-} ]]; then
    args+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "${MASTER_ADDR:?set MASTER_ADDR with NODE_RANK}")
else
    DS_ENV_FILE=$(mktemp)
    export DS_ENV_FILE
    trap 'rm -f "$DS_ENV_FILE"' EXIT
    for name in ${DS_ENV_VARS:-PATH LD_LIBRARY_PATH HF_HOME HF_HUB_OFFLINE TOKENIZERS_PARALLELISM OMP_NUM_THREADS}; do
        [[ -n ${!name:-} ]] && echo "$name=${!name}" >>"$DS_ENV_FILE"
    done
    [[ -n ${MASTER_ADDR:-} ]] && args+=(--master_addr "$MASTER_ADDR")
fi
deepspeed "${args[@]}" dist_optical train "$@"
