#!/usr/bin/env bash
# The GPU checks, in one prepared script that cannot run past 8 minutes (every step runs under
# `timeout`, its limit cut to what is left of the total; a step with too little time left is
# skipped and says so):
#
#   1. bench/sinkhorn_device.py on CUDA, fp32 and bf16: ours, POT's batch solver and POT's loop on
#      the device, each solve's time against the card's measured copy bandwidth (bytes model in
#      its docstring), and the MiniLM training step -> bench/results/sinkhorn-cuda.json
#   2. a short bf16 training of configs/default.yaml under the deepspeed launcher (NCCL), at ZeRO-2
#      and at ZeRO-3: samples/s from RUN/metrics.jsonl (median after the warm-up steps), peak GPU
#      memory (nvidia-smi sampled every 0.5 s)
#   3. kill-and-resume at ZeRO-2: start, wait for KILL_AFTER steps in metrics.jsonl, SIGTERM the
#      launcher's whole process group (as a cluster does), check the stop (exit status 75, see
#      below) and checkpoints/latest, rerun with --resume auto to the end, check that metrics.jsonl
#      has every step exactly once
#   4. bench/results/gpu.json (everything, collected by a small inline python) and a table
#
#   bash bench/gpu.sh
#
# Environment (all optional):
#   DATA_ROOT         folder with bible/, tatoeba/, xnli/ (default: the config's ../shared/data,
#                     else ./shared/data)
#   PYTHON            interpreter (default: python)
#   GPU_BENCH_TOTAL_S the whole script's budget in seconds (default 470, under 8 minutes)
#   TRAIN_STEPS       steps of each ZeRO run (default 40); SKIP_STEPS warm-up steps left out (5)
#   KILL_STEPS        max_steps of the kill-and-resume run (default 200); KILL_AFTER steps logged
#                     before the SIGTERM (default 5)
#   KILL_MODE         group (default): SIGTERM to every process of the launcher's process group;
#                     worker: SIGTERM to the rank process only (its pid from RUN/locks/rank0.lock)
#   COPY_RESULTS_TO   a folder to copy gpu.json, sinkhorn-cuda.json and the logs into at the end
#   GPU_BENCH_DRY_CPU=1  a rehearsal without a GPU: the same steps on CPU with configs/tiny.yaml in
#                     fp32 (gloo), tiny Sinkhorn shapes, results under the work folder only
#                     (bench/results untouched). It checks the script's plumbing; it measures nothing.
#
# About exit status 75 under the deepspeed launcher: the rank checkpoints at the next step boundary
# and exits 75 (it prints "stopped by SIGTERM: checkpointed at step N" right before). With
# KILL_MODE=worker the launcher passes that 75 on. With a group SIGTERM the single-node `deepspeed`
# runner has no SIGTERM handler and dies at once (143), and deepspeed.launcher.launch, after
# waiting for its rank, exits 1: the rank's own 75 is not observable from here, so the check
# accepts the launcher's 75, or the rank's stop line plus a clean end of the whole group.
#
# Exit: 0 every check passed; 1 some check failed or was skipped (see the table and gpu.json);
# 2 no usable NVIDIA GPU, or something the checks need is missing (the message says what).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python}
DRY=${GPU_BENCH_DRY_CPU:-0}
for tool in timeout "$PY"; do
    command -v "$tool" >/dev/null || { echo "bench/gpu.sh: '$tool' not found on PATH" >&2; exit 2; }
done
if [[ $DRY != 1 ]] && ! command -v nvidia-smi >/dev/null; then
    echo "bench/gpu.sh: nvidia-smi not found: this script needs a machine with an NVIDIA GPU and its" \
        "driver (GPU_BENCH_DRY_CPU=1 rehearses it on CPU)" >&2
    exit 2
fi
TOTAL_S=${GPU_BENCH_TOTAL_S:-470}
TRAIN_STEPS=${TRAIN_STEPS:-40}
SKIP_STEPS=${SKIP_STEPS:-5}
KILL_STEPS=${KILL_STEPS:-200}
KILL_AFTER=${KILL_AFTER:-5}
KILL_MODE=${KILL_MODE:-group}
RESERVE_S=25   # kept for the report at the end
GRACE_S=10     # timeout's SIGTERM -> SIGKILL delay (counted inside each step's limit)
MIN_STEP_S=20  # a step that would get less than this is skipped
START=$SECONDS

STAMP=$(date +%Y%m%d-%H%M%S)
WORK=$REPO/runs/gpu-bench-$STAMP-$$ # runs/ is git-ignored; a new folder each time (never on top of work)
LOGS=$WORK/logs
RESULTS=$REPO/bench/results
CONFIG=configs/default.yaml
PRECISION=bf16
SINKHORN_ARGS=(--device cuda --dtypes "fp32,bf16" --batches "32,256,1024" --sizes "32,64,128,256" --repeats 10
    --bandwidth-mib 2048)
if [[ $DRY == 1 ]]; then
    RESULTS=$WORK/results
    CONFIG=configs/tiny.yaml
    PRECISION=fp32
    SINKHORN_ARGS=(--device cpu --dtypes "fp32,bf16" --batches 4 --sizes 8 --repeats 2 --loop-items 2
        --steps 1 --bandwidth-mib 64)
fi
STEPS_TSV=$WORK/steps.tsv
mkdir -p "$LOGS" "$RESULTS" || exit 2
: >"$STEPS_TSV"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} # the repo's package, installed or not
export NCCL_DEBUG=${NCCL_DEBUG:-VERSION}            # one "NCCL version" line: NCCL was used
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

log() { printf '[%s +%3ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
# steps.tsv: name, status (ok|failed|timeout|skipped), rc, seconds, limit, note
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6//$'\t'/ }" >>"$STEPS_TSV"; }
die() {
    log "FATAL: $*"
    record setup fatal 2 "$((SECONDS - START))" 0 "$*"
    echo "bench/gpu.sh: $* (logs: ${LOGS#"$REPO"/})" >&2
    exit 2
}
# Seconds a step may take: what it wants, cut to the total left (less the report's reserve and
# timeout's SIGKILL grace).
limit_for() {
    local want=$1 left=$((TOTAL_S - RESERVE_S - GRACE_S - (SECONDS - START)))
    ((left < want)) && want=$left
    echo "$want"
}
count_lines() { if [[ -f $1 ]]; then grep -c . "$1"; else echo 0; fi; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run_step NAME WANT_S LOGFILE CMD...: CMD under `timeout` (which puts it in a process group of its
# own and, on expiry, SIGTERMs the whole group, SIGKILL GRACE_S later); recorded in steps.tsv.
run_step() {
    local name=$1 want=$2 logfile=$3 limit t0 rc took status=ok
    shift 3
    limit=$(limit_for "$want")
    if ((limit < MIN_STEP_S)); then
        log "$name: SKIPPED (only ${limit}s left of the ${TOTAL_S}s budget)"
        record "$name" skipped "" 0 "$limit" "out of time"
        return 125
    fi
    log "$name: up to ${limit}s: $*"
    t0=$SECONDS
    timeout -k "$GRACE_S" "$limit" "$@" </dev/null >"$logfile" 2>&1
    rc=$?
    took=$((SECONDS - t0))
    if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status=failed; fi
    record "$name" "$status" "$rc" "$took" "$limit" "log ${logfile#"$REPO"/}"
    log "$name: $status (rc $rc, ${took}s)"
    ((rc != 0)) && tail -n 20 "$logfile" | sed 's/^/    | /'
    return "$rc"
}

# ------------------------------------------------------------------------------------ 0. preflight
log "bench/gpu.sh: work folder ${WORK#"$REPO"/}, budget ${TOTAL_S}s$([[ $DRY == 1 ]] && echo ', DRY RUN ON CPU')"
if [[ $DRY != 1 ]]; then
    timeout 30 nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
        >"$LOGS/nvidia-smi.txt" 2>&1 || die "nvidia-smi failed: $(head -c 300 "$LOGS/nvidia-smi.txt")"
    log "GPU: $(head -1 "$LOGS/nvidia-smi.txt")"
fi

if [[ -z ${DATA_ROOT:-} ]]; then
    for candidate in "$REPO/../shared/data" "$REPO/shared/data"; do
        if [[ -f $candidate/bible/Swahili-NT.xml ]]; then
            DATA_ROOT=$(cd "$candidate" && pwd)
            break
        fi
    done
fi
[[ -n ${DATA_ROOT:-} && -f $DATA_ROOT/bible/Swahili-NT.xml ]] ||
    die "no data root: set DATA_ROOT to the folder holding bible/, tatoeba/, xnli/ (shared/data)"
export DATA_ROOT DRY CONFIG

# torch sees the GPU (bf16 too), the libraries import, every file the default config reads exists,
# and the packaged models are built (first use: ~5 s) before any timed step.
export PREFLIGHT_JSON=$LOGS/preflight.json # written by the python itself (deepspeed logs to stdout)
if ! timeout 150 "$PY" - >"$LOGS/preflight.err" 2>&1 <<'EOF'; then
import json, os, sys
import torch
dry = os.environ["DRY"] == "1"
if not dry and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU: "
             "torch.cuda.is_available() is False")
if not dry and not torch.cuda.is_bf16_supported():
    sys.exit(f"{torch.cuda.get_device_name(0)}: no bf16 support")
import deepspeed, ot, sentence_transformers, transformers  # noqa: E401
from dist_optical.config import data_path, load_config
from dist_optical.models import resolve_model_path
cfg = load_config(os.environ["CONFIG"], [f"data.root={os.environ['DATA_ROOT']}"])
needed = [f for b in cfg.data.bitexts for f in b.files]
needed += [f for s in cfg.eval.sets for f in (s.queries, s.targets) if f]
missing = [str(data_path(cfg, f)) for f in needed if not data_path(cfg, f).is_file()]
if missing:
    sys.exit(f"configs/default.yaml needs files that are missing: {missing}")
names = {"all-MiniLM-L6-v2", cfg.model.teacher, cfg.model.student or cfg.model.teacher}  # MiniLM: sinkhorn_device.py
models = {name: str(resolve_model_path(name)) for name in sorted(names)}
gpu = {} if dry else {
    "device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
    "device_count": torch.cuda.device_count(), "nccl": ".".join(map(str, torch.cuda.nccl.version())),
}
open(os.environ["PREFLIGHT_JSON"], "w").write(json.dumps({
    "device": "cpu (dry run)", **gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
    "config": os.environ["CONFIG"], "micro_batch_size": cfg.train.micro_batch_size,
    "deepspeed": deepspeed.__version__,
    "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
    "pot": ot.__version__, "data_root": os.environ["DATA_ROOT"], "models": models,
}) + "\n")
EOF
    die "preflight failed: $(tail -n 3 "$LOGS/preflight.err" | tr '\n' ' ')"
fi
record preflight ok 0 "$((SECONDS - START))" 150 "log ${LOGS#"$REPO"/}/preflight.err"
log "preflight ok: $(cat "$LOGS/preflight.json")"

if command -v deepspeed >/dev/null; then
    DS=(deepspeed)
else
    DS=("$PY" -m deepspeed.launcher.runner)
fi
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export GIT_COMMIT

# ------------------------------------------------------------------------------- 1. Sinkhorn (CUDA)
mkdir -p "$RESULTS"
run_step sinkhorn 110 "$LOGS/sinkhorn.log" "$PY" bench/sinkhorn_device.py "${SINKHORN_ARGS[@]}" \
    --bible "$DATA_ROOT/bible" --out "$RESULTS/sinkhorn-cuda.json"

# ------------------------------------------------------------- 2. bf16 training, ZeRO-2 and ZeRO-3
# train_cmd OUT STAGE STEPS [EXTRA...] -> the array CMD: one rank under the deepspeed launcher.
train_cmd() {
    local out=$1 stage=$2 steps=$3
    shift 3
    CMD=("${DS[@]}" --num_gpus 1 --master_port "$(free_port)" --no_local_rank --module dist_optical
        train --config "$CONFIG" --out "$out" "$@"
        "train.precision=$PRECISION" "train.max_steps=$steps" train.eval_every=0 train.save_every=0
        "train.deepspeed=configs/ds/zero$stage.json" "data.root=$DATA_ROOT")
}

# GPU memory in use, sampled every 0.5 s into FILE while a step runs (stopped by its pid).
start_gpu_sampler() {
    if [[ $DRY == 1 ]]; then
        SAMPLER=
        return
    fi
    timeout "$TOTAL_S" nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
        >"$1" 2>/dev/null &
    SAMPLER=$!
}
stop_gpu_sampler() { [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null; }

for stage in 2 3; do
    train_cmd "$WORK/zero$stage" "$stage" "$TRAIN_STEPS"
    start_gpu_sampler "$LOGS/zero$stage.gpumem"
    run_step "zero$stage" 90 "$LOGS/zero$stage.log" "${CMD[@]}"
    stop_gpu_sampler
done

# -------------------------------------------------------------------------- 3. kill and resume
KILL_OUT=$WORK/kill-zero2
KILL_ENV=$WORK/kill.env # facts for the report, KEY=VALUE
: >"$KILL_ENV"
kill_and_resume() {
    local limit t0 tpid rc n=0 waited=0 wait_max wpid latest logged stop_line group_gone=1 ok=1
    # 35 s of the step's share kept back: timeout's -k 45 (below) instead of GRACE_S
    limit=$(($(limit_for 80) - 35))
    if ((limit < MIN_STEP_S)); then
        log "kill: SKIPPED (only ${limit}s left)"
        record kill skipped "" 0 "$limit" "out of time"
        record resume skipped "" 0 0 "out of time"
        return
    fi
    train_cmd "$KILL_OUT" 2 "$KILL_STEPS"
    log "kill: up to ${limit}s: ${CMD[*]}"
    t0=$SECONDS
    # -k 45: should timeout itself be signalled, the rank still has 45 s to checkpoint before SIGKILL.
    timeout -k 45 "$limit" "${CMD[@]}" </dev/null >"$LOGS/kill.log" 2>&1 &
    tpid=$! # timeout leads a process group of its own: launcher, deepspeed.launcher.launch, rank, workers
    while kill -0 "$tpid" 2>/dev/null; do
        n=$(count_lines "$KILL_OUT/metrics.jsonl")
        ((n >= KILL_AFTER)) && break
        sleep 0.2
    done
    if ! kill -0 "$tpid" 2>/dev/null; then
        wait "$tpid"
        rc=$?
        record kill failed "$rc" "$((SECONDS - t0))" "$limit" "the run ended (rc $rc) with $n steps logged, before the SIGTERM"
        record resume skipped "" 0 0 "no stopped run to resume"
        tail -n 20 "$LOGS/kill.log" | sed 's/^/    | /'
        return
    fi
    echo "steps_logged_at_signal=$n" >>"$KILL_ENV"
    if [[ $KILL_MODE == worker ]]; then
        wpid=$(sed -n 's/.*(pid \([0-9][0-9]*\) on .*/\1/p' "$KILL_OUT/locks/rank0.lock" 2>/dev/null | head -1)
        log "kill: $n steps logged; SIGTERM to the rank (pid ${wpid:-?})"
        [[ -n $wpid ]] && kill -TERM "$wpid"
    else
        log "kill: $n steps logged; SIGTERM to the process group $tpid"
        kill -TERM -- "-$tpid"
    fi
    wait "$tpid"
    rc=$?
    # The launcher can return before the rank has finished its checkpoint: wait for the whole group
    # (60 s at most, and never past the budget).
    wait_max=$((TOTAL_S - RESERVE_S - (SECONDS - START)))
    ((wait_max > 60)) && wait_max=60
    while kill -0 -- "-$tpid" 2>/dev/null; do
        ((waited >= wait_max * 10)) && { group_gone=0; break; }
        sleep 0.1
        waited=$((waited + 1))
    done
    if ((group_gone == 0)); then # still there: stop it hard, or it would hold the run folder's lock
        kill -KILL -- "-$tpid" 2>/dev/null
        sleep 1
    fi
    latest=$(cat "$KILL_OUT/checkpoints/latest" 2>/dev/null || echo none)
    logged=$(count_lines "$KILL_OUT/metrics.jsonl")
    stop_line=$(grep -c "stopped by SIGTERM: checkpointed at step" "$LOGS/kill.log")
    {
        echo "kill_mode=$KILL_MODE"
        echo "launcher_rc=$rc"
        echo "rank_stop_line=$stop_line"
        echo "group_gone=$group_gone"
        echo "group_gone_after_s=$((waited / 10))"
        echo "latest=$latest"
        echo "steps_logged_after_stop=$logged"
    } >>"$KILL_ENV"
    # exit status 75: the launcher's, or (group signal: not passed on) the rank's stop line + a clean end
    if ! ((rc == 75 || (stop_line > 0 && group_gone == 1))); then ok=0; fi
    [[ $latest == "$(printf 'step%06d' "$logged")" ]] || ok=0
    [[ -d $KILL_OUT/checkpoints/$latest ]] || ok=0
    if ((ok)); then
        record kill ok "$rc" "$((SECONDS - t0))" "$limit" "launcher rc $rc, rank stop line $stop_line, latest $latest = steps logged $logged"
    else
        record kill failed "$rc" "$((SECONDS - t0))" "$limit" "launcher rc $rc, rank stop line $stop_line, group gone $group_gone, latest $latest, steps logged $logged"
        tail -n 20 "$LOGS/kill.log" | sed 's/^/    | /'
    fi
    log "kill: launcher rc $rc, rank stop line $stop_line, latest $latest, $logged steps logged"
    [[ $latest == none ]] && { record resume skipped "" 0 0 "no checkpoint to resume"; return; }

    train_cmd "$KILL_OUT" 2 "$KILL_STEPS" --resume auto
    run_step resume 80 "$LOGS/resume.log" "${CMD[@]}"
}
kill_and_resume

# ------------------------------------------------------------------------------------ 4. report
export WORK LOGS RESULTS STEPS_TSV KILL_ENV TRAIN_STEPS SKIP_STEPS KILL_STEPS TOTAL_S PRECISION
export ELAPSED_S=$((SECONDS - START))
timeout "$RESERVE_S" "$PY" - <<'EOF'
import json, os, statistics, sys, time
from pathlib import Path

work, logs, results = Path(os.environ["WORK"]), Path(os.environ["LOGS"]), Path(os.environ["RESULTS"])
env = {k: int(os.environ[k]) for k in ("TRAIN_STEPS", "SKIP_STEPS", "KILL_STEPS", "TOTAL_S", "ELAPSED_S")}
steps = {}
for line in Path(os.environ["STEPS_TSV"]).read_text().splitlines():
    name, status, rc, seconds, limit, note = (line.split("\t") + [""] * 6)[:6]
    steps[name] = {"status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                   "seconds": int(seconds or 0), "limit_s": int(limit or 0), "note": note}


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def metrics(run):
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def grep(path, text):
    try:
        return [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if text in line]
    except OSError:
        return []


def peak(path):
    try:
        values = [int(v) for v in Path(path).read_text().split() if v.isdigit()]
    except OSError:
        return None
    return max(values) if values else None


pre = read_json(logs / "preflight.json") or {}
batch = pre.get("micro_batch_size", 16)
training = {}
for stage in (2, 3):
    m = metrics(work / f"zero{stage}")
    timed = m[env["SKIP_STEPS"]:]
    row = {"steps_logged": len(m), "status": steps.get(f"zero{stage}", {}).get("status", "missing")}
    if timed:
        row.update(
            samples_per_s_median=statistics.median(x["samples_per_s"] for x in timed),
            step_ms_median=1e3 * statistics.median(batch / x["samples_per_s"] for x in timed),
            loss_first=m[0]["loss"], loss_last=m[-1]["loss"],
            params_mib=m[-1].get("mem/params_mib"), optimizer_mib=m[-1].get("mem/optimizer_mib"),
            peak_rss_mib=m[-1].get("mem/peak_rss_mib"),
        )
    row["peak_gpu_mem_mib"] = peak(logs / f"zero{stage}.gpumem")
    row["nccl"] = (grep(logs / f"zero{stage}.log", "NCCL version") or [None])[0]
    training[f"zero{stage}"] = row

kill = {}
try:
    for line in Path(os.environ["KILL_ENV"]).read_text().splitlines():
        key, _, value = line.partition("=")
        kill[key] = value
except OSError:
    pass
resumed = [x["step"] for x in metrics(work / "kill-zero2")]
kill["resume_steps_logged"] = len(resumed)
kill["every_step_once"] = resumed == list(range(1, env["KILL_STEPS"] + 1))
if steps.get("resume", {}).get("status") == "ok" and not kill["every_step_once"]:
    steps["resume"]["status"] = "failed"
    steps["resume"]["note"] += f"; metrics.jsonl steps are not 1..{env['KILL_STEPS']} once each"

sinkhorn = read_json(results / "sinkhorn-cuda.json")
result = {
    "command": "bash bench/gpu.sh",
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "git_commit": os.environ.get("GIT_COMMIT"),
    "elapsed_s": env["ELAPSED_S"],
    "budget_s": env["TOTAL_S"],
    "work_dir": str(work),
    "nvidia_smi": (logs / "nvidia-smi.txt").read_text().strip() if (logs / "nvidia-smi.txt").is_file() else None,
    "dry_run_on_cpu": os.environ["DRY"] == "1",
    "preflight": pre,
    "steps": steps,
    "training": {"precision": os.environ["PRECISION"], "config": os.environ["CONFIG"],
                 "launcher": "deepspeed --num_gpus 1", "micro_batch_size": batch,
                 "max_steps": env["TRAIN_STEPS"], "warmup_steps_skipped": env["SKIP_STEPS"], **training},
    "kill_resume": {"zero_stage": 2, "max_steps": env["KILL_STEPS"], **kill},
    "sinkhorn": sinkhorn,
}
out = results / "gpu.json"
tmp = out.with_suffix(".json.tmp")
tmp.write_text(json.dumps(result, indent=2) + "\n")
tmp.replace(out)

def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"

lines = ["| check | status | seconds | figures |", "|---|---|---:|---|"]
lines.append(f"| preflight | {steps.get('preflight', {}).get('status', 'missing')} | "
             f"{steps.get('preflight', {}).get('seconds', '')} | {pre.get('device')}, torch {pre.get('torch')}, "
             f"CUDA {pre.get('cuda')}, NCCL {pre.get('nccl')}, deepspeed {pre.get('deepspeed')} |")
sk = steps.get("sinkhorn", {})
figure = "no results"
if sinkhorn:
    bw = sinkhorn["copy_bandwidth"]["gb_per_s"]
    big = [r for r in sinkhorn["solvers"].get("fp32", []) if r["solver"] == "ours"]
    big = max(big, key=lambda r: r["model_bytes"], default=None)
    figure = f"copy {bw:.0f} GB/s"
    if big:
        figure += (f"; ours fp32 B={big['B']} n={big['n']}: {big['fwd_s'] * 1e3:.2f} ms, "
                   f"{big['implied_gb_per_s']:.1f} GB/s modelled ({big['fraction_of_copy_bw']:.0%} of copy)")
lines.append(f"| Sinkhorn fp32+bf16 | {sk.get('status', 'missing')} | {sk.get('seconds', '')} | {figure} |")
for stage in (2, 3):
    row, st = training[f"zero{stage}"], steps.get(f"zero{stage}", {})
    lines.append(f"| ZeRO-{stage} {os.environ['PRECISION']}, {env['TRAIN_STEPS']} steps | {st.get('status', 'missing')} | "
                 f"{st.get('seconds', '')} | {fmt(row.get('samples_per_s_median'), '.1f')} samples/s "
                 f"({fmt(row.get('step_ms_median'), '.1f')} ms/step), peak GPU mem "
                 f"{fmt(row.get('peak_gpu_mem_mib'), 'd')} MiB, {row.get('nccl') or 'no NCCL line'} |")
st = steps.get("kill", {})
lines.append(f"| kill (SIGTERM, {kill.get('kill_mode', '?')}) | {st.get('status', 'missing')} | "
             f"{st.get('seconds', '')} | {st.get('note', '')} |")
st = steps.get("resume", {})
lines.append(f"| resume --resume auto | {st.get('status', 'missing')} | {st.get('seconds', '')} | "
             f"{kill['resume_steps_logged']} steps logged, every step once: {kill['every_step_once']} |")
print()
print("\n".join(lines))
if sinkhorn and sinkhorn.get("markdown"):
    print()
    print(sinkhorn["markdown"])
print(f"wrote {out} ({env['ELAPSED_S']} s of the {env['TOTAL_S']} s budget before the report)")
bad = [name for name, s in steps.items() if s["status"] != "ok"]
if bad:
    print(f"NOT OK: {', '.join(bad)}")
sys.exit(1 if bad else 0)
EOF
rc=$?

if [[ -n ${COPY_RESULTS_TO:-} ]]; then
    mkdir -p "$COPY_RESULTS_TO" &&
        cp -f "$RESULTS/gpu.json" "$COPY_RESULTS_TO/" 2>/dev/null
    cp -f "$RESULTS/sinkhorn-cuda.json" "$COPY_RESULTS_TO/" 2>/dev/null
    cp -rf "$LOGS" "$COPY_RESULTS_TO/" 2>/dev/null
fi
log "done in $((SECONDS - START))s (rc $rc)"
exit "$rc"
