#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munged + slurmctld + slurmd), for tests and demos.
#
#   launchers/dev-slurm/up.sh                 # idempotent: a running cluster is left as it is
#   export SLURM_CONF=/tmp/dist-optical-slurm/slurm.conf
#   sinfo; dist-optical submit --cluster slurm ...
#   launchers/dev-slurm/down.sh
#
# Needs root (slurmd runs jobs as their user) and Debian's `apt-get install slurm-wlm munge`.
# State, logs and the generated slurm.conf live in $DEV_SLURM_DIR (default /tmp/dist-optical-slurm);
# the node is `hostname` with `nproc` CPUs. On failure the reason is also left in $DEV_SLURM_DIR/up.error.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${DEV_SLURM_DIR:-/tmp/dist-optical-slurm}
conf=$dir/slurm.conf
export SLURM_CONF=$conf PATH=$PATH:/usr/sbin:/sbin

fail() {
    echo "dev-slurm: $*" >&2
    mkdir -p "$dir" && echo "$*" >"$dir/up.error"
    exit 1
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || fail "must run as root (slurmd starts jobs as their user)"
for bin in munged munge unmunge slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || fail "$bin not found: apt-get install -y slurm-wlm munge"
done
mkdir -p "$dir/ctld" "$dir/spool"
rm -f "$dir/up.error"

# munge: reuse a running munged (e.g. a system one); otherwise start one and remember it was ours.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -f /etc/munge/munge.key ]] || { mungekey --create && chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    touch "$dir/munged.ours"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || fail "munged did not start (see /var/log/munge/munged.log)"
fi

if ! alive "$dir/slurmctld.pid" || ! alive "$dir/slurmd.pid"; then
    host=$(hostname)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEM_MB@|$mem_mb|g" -e "s|@STATE@|$dir|g" \
        -e "s|@CRED_EXPIRE@|${DEV_SLURM_CRED_EXPIRE:-10}|g" \
        -e "s|@CTLD_PORT@|${DEV_SLURM_CTLD_PORT:-6817}|g" -e "s|@SLURMD_PORT@|${DEV_SLURM_SLURMD_PORT:-6818}|g" \
        "$here/slurm.conf.in" >"$conf"
    # Both daemons fork into the background and write their pid files (down.sh reads them).
    alive "$dir/slurmctld.pid" || slurmctld -f "$conf" || fail "slurmctld did not start: $(tail -5 "$dir/slurmctld.log" 2>/dev/null)"
    alive "$dir/slurmd.pid" || slurmd -f "$conf" || fail "slurmd did not start: $(tail -5 "$dir/slurmd.log" 2>/dev/null)"
fi

for _ in $(seq 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
    sleep 0.5
done
if [[ ! ${state:-} =~ ^(idle|mix|alloc) ]]; then
    fail "node not ready after 30 s (state '${state:-none}'); logs: $dir/slurmctld.log $dir/slurmd.log"
fi
echo "dev-slurm: up ($(sinfo -h -o '%P %D node(s) %c CPUs %t'))"
echo "export SLURM_CONF=$conf"
