#!/usr/bin/env bash
# Stop the dev cluster started by up.sh: cancel its jobs, stop slurmd and slurmctld (and munged if
# up.sh started it). Idempotent: nothing running is not an error. State stays in $DEV_SLURM_DIR.
set -uo pipefail

dir=${DEV_SLURM_DIR:-/tmp/dist-optical-slurm}
export SLURM_CONF=$dir/slurm.conf PATH=$PATH:/usr/sbin:/sbin

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {  # stop the process named in pid file $1: TERM, then KILL after 10 s
    alive "$1" || { rm -f "$1"; return 0; }
    local pid
    pid=$(cat "$1")
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$1"
}

if alive "$dir/slurmctld.pid"; then
    # Cancel leftovers so a later up.sh does not restart them; give slurmd time to end their steps.
    timeout 10 squeue -h -o %A 2>/dev/null | xargs -r timeout 10 scancel 2>/dev/null
    for _ in $(seq 50); do [[ -z $(timeout 5 squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
fi
stop "$dir/slurmd.pid"
stop "$dir/slurmctld.pid"
if [[ -f $dir/munged.ours ]]; then
    stop /run/munge/munged.pid
    rm -f "$dir/munged.ours"
fi
echo "dev-slurm: down"
