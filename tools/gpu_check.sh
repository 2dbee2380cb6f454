#!/usr/bin/env bash
# tools/gpu_check.sh: run every GPU code path of hvd_stgnn once on one GPU node, in under 8
# minutes, and record what passed, what failed and the key figures (docs/GPU.md).
#
# Usage:   tools/gpu_check.sh [--dry-run] [--pack] [OUTDIR]
#   tools/gpu_check.sh /tmp/gpu-check      # results in /tmp/gpu-check (default: $OUT, else runs/gpu-check)
#   tools/gpu_check.sh --dry-run           # print every step's command, run nothing (no GPU needed); DRY_RUN=1 too
#   tools/gpu_check.sh --pack              # OUTDIR gets only summary.md, summary.json and
#                                          # gpu_check_logs.tar.gz (the step logs): for a place
#                                          # that takes back a few files (a device machine's $OUT)
#   tools/gpu_check.sh --summarize LOGDIR [OUTDIR]   # (re)write the summary from LOGDIR/steps.tsv
#
# Output: one file per step, NN-STEP.log (its command on the first line, then its stdout and
# stderr, then its exit status; bench steps put their JSON in NN-STEP.json), steps.tsv (the raw
# records), summary.md (a table: step, status, seconds, key figure) and summary.json. The
# summary is rewritten after every step, so a run cut short still leaves one. A failed step
# is recorded and the next one runs; the exit status is 1 when any step failed, else 0.
# Statuses: pass; fail; warn (informational steps: no nvidia-smi, a CPU-only Horovod); skip
# (not run: it needs an NCCL Horovod, or the time budget was spent).
#
# Steps: setup (only when .venv is missing: tools/setup.sh with HOROVOD_GPU_OPERATIONS=NCCL,
# its time outside the budget); the environment (nvidia-smi -L, nvidia-smi, python / torch /
# CUDA / cuDNN / NCCL versions, horovodrun --check-build, Horovod's MPI / CUDA / NCCL build);
# datasets (synthetic tiny and metr-la); pytest -m gpu; one run under --sync-debug; every
# model on CUDA; materialized, global-shuffle, bf16, fp16 and --compile runs; stop + resume;
# Horovod -np 1, DDP under mpirun and under torchrun, each with --timeline and its report;
# the checks that must refuse with one line (2 ranks on 1 GPU, no visible GPU) and the one
# that must work (DDP with --device cpu on a GPU node); bench batching and bench models
# (plain, bf16, --compile) on CUDA. Without an NCCL build of Horovod (a CPU-only one, or
# none) the Horovod steps are skipped and recorded as such; DDP goes on.
#
# Knobs (environment):
#   GPU_CHECK_BUDGET_S=450   seconds for all steps after setup; a step that would start later
#                            is skipped, and a running one is cut at the budget
#   GPU_CHECK_STEP_S=150     one step's time limit (compile and pytest steps: 240)
#   GPU_CHECK_WORK=DIR       datasets, run dirs, traces, results (default: a new
#                            $TMPDIR/hvd-stgnn-gpu-check.XXXXXX, kept; its path is in the summary;
#                            its runs/ and logs/ are emptied at the start)
#   HOROVOD_GPU_OPERATIONS   for the setup step (default NCCL)
#   DRY_RUN=1                the same as --dry-run
# Exit status: 0 every step passed (or warned / was skipped), 1 a step failed, 2 bad usage.
set -uo pipefail  # no -e: a failed step is recorded and the next one runs

ME=tools/gpu_check.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../jobs/common.sh
source "$ROOT/jobs/common.sh"  # quote_words, is_dry_run

usage() { echo "usage: $ME [--dry-run] [--pack] [OUTDIR] | --summarize LOGDIR [OUTDIR]" >&2; exit 2; }

# ---- the summary writer: steps.tsv (+ the logs) -> summary.md, summary.json; exit 1 on a failure ----
SUMMARY_PY="$(command -v python3 || echo "$ROOT/.venv/bin/python")"
summarize() {  # LOGDIR OUTDIR
    "$SUMMARY_PY" - "$1" "$2" <<'PY'
import json, os, re, sys

logdir, outdir = sys.argv[1], sys.argv[2]
FIELDS = ["step", "expect", "state", "rc", "seconds", "log", "out", "key", "limit", "reason", "command"]


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def output_lines(row):
    """The step's output: its log without the command line and the exit-status trailer."""
    lines = read(os.path.join(logdir, row["log"])).splitlines() if row["log"] else []
    return [l for i, l in enumerate(lines) if not (i == 0 and l.startswith("$ ")) and not l.startswith("# exit status")]


def last_line(lines):
    body = [l.strip() for l in lines if l.strip()]
    return body[-1] if body else ""


def error_line(lines):
    errs = [l.strip() for l in lines if re.search(r"\berror\b", l, re.I)]
    colon = [l for l in errs if "error:" in l]
    return (colon or errs or [""])[0]


def judge(row, lines):
    """(status, note) of one record."""
    if row["state"] == "skip":
        return "skip", row["reason"]
    rc = int(row["rc"])
    if rc in (124, 137):
        cut = " (cut at the time budget)" if row["reason"] == "budget" else ""
        return "fail", f"timed out after {row['limit']} s{cut}: {last_line(lines)}"
    if row["expect"] == "refuse":  # must exit non-zero with one clear line (saying KEY's line:REGEX), no traceback
        want = row["key"][5:] if row["key"].startswith("line:") else ""
        err = error_line([l for l in lines if re.search(want, l)] if want else lines)
        if rc == 0:
            return "fail", "exit status 0: expected a refusal with one line"
        if any("Traceback (most recent call last)" in l for l in lines):
            return "fail", f"exit status {rc} with a traceback, expected one line: {err or last_line(lines)}"
        if not err:
            about = f" that matches {want!r}" if want else ""
            return "fail", f"exit status {rc} without an error line{about}: {error_line(lines) or last_line(lines)}"
        return "pass", err
    if rc == 0:
        return "pass", ""
    note = f"exit status {rc}: {error_line(lines) or last_line(lines)}"
    return ("warn" if row["expect"] == "warn" else "fail"), note


def jload(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else "?"


def key_figure(row, lines):
    kind, _, arg = row["key"].partition(":")
    text = "\n".join(lines)
    if kind == "gpus":
        gpus = [l for l in lines if re.match(r"GPU \d+:", l)]
        name = gpus[0].split(":", 1)[1].split("(UUID")[0].strip() if gpus else ""
        return f"{len(gpus)} GPU(s)" + (f": {name}" if name else "")
    if kind == "smi":
        drv = re.search(r"Driver Version:\s*([\d.]+)", text)
        cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
        return ", ".join(p for p in (drv and f"driver {drv.group(1)}", cuda and f"CUDA {cuda.group(1)} (driver API)") if p)
    if kind in ("line", "first"):
        hits = [l.strip() for l in lines if re.search(arg, l)]
        return (hits[-1] if kind == "line" else hits[0]) if hits else ""
    if kind == "results":
        res = jload(arg)
        if not isinstance(res, dict):
            return ""
        mae = ((res.get("test") or {}).get("mae") or {}).get("avg")
        sps = (res.get("timing") or {}).get("samples_per_second")
        ranks = (res.get("memory") or {}).get("per_rank") or [{}]
        peak = max((r.get("cuda_peak_bytes") or 0) for r in ranks)
        device = (res.get("batching") or {}).get("device", "")
        parts = [f"test MAE {fmt(mae, '.3f')}", f"{fmt(sps, '.0f')} samples/s"]
        if peak:
            parts.append(f"GPU peak {peak / 2**20:.0f} MiB")
        if device:
            parts.append(f"batches on {device}")
        return ", ".join(parts)
    if kind == "bench-models":
        rows = jload(os.path.join(logdir, row["out"])) if row["out"] else None
        if not isinstance(rows, list):
            return ""
        return "; ".join(f"{r.get('model')}@{r.get('nodes')} {fmt(r.get('step_ms'), '.2f')} ms" for r in rows)
    if kind == "bench-batching":
        rows = jload(os.path.join(logdir, row["out"])) if row["out"] else None
        if not isinstance(rows, list):
            return ""
        return "; ".join(f"N={r.get('nodes')}: batch {fmt(r.get('batch_ms'), '.3f')} ms "
                         f"({fmt(r.get('batch_over_memcpy'), '.1f')}x memcpy)" for r in rows)
    return ""


rows = []
tsv = os.path.join(logdir, "steps.tsv")
for line in read(tsv).splitlines():
    if line.strip():
        rows.append(dict(zip(FIELDS, line.split("\t") + [""] * len(FIELDS))))
meta = {}
for line in read(os.path.join(logdir, "meta.tsv")).splitlines():
    if "\t" in line:
        k, v = line.split("\t", 1)
        meta[k] = v

steps = []
for row in rows:
    lines = output_lines(row)
    status, note = judge(row, lines)
    # The key figure of a plain pass; otherwise the note: why it failed, warned or was
    # skipped, or the line a refusal gave.
    key = key_figure(row, lines) if status == "pass" and not note else note
    key = " ".join(key.split())
    steps.append({
        "step": row["step"], "status": status, "seconds": float(row["seconds"] or 0),
        "rc": None if row["rc"] in ("", "-") else int(row["rc"]), "key": key[:400], "expect": row["expect"],
        "log": row["log"], "output": row["out"] or None, "command": row["command"],
    })

counts = {s: sum(1 for x in steps if x["status"] == s) for s in ("pass", "fail", "warn", "skip")}
summary = {**meta, "counts": counts, "ok": counts["fail"] == 0,
           "steps_seconds": round(sum(x["seconds"] for x in steps), 1), "steps": steps}
os.makedirs(outdir, exist_ok=True)
with open(os.path.join(outdir, "summary.json.tmp"), "w") as f:
    json.dump(summary, f, indent=2)
os.replace(os.path.join(outdir, "summary.json.tmp"), os.path.join(outdir, "summary.json"))


def cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


md = [f"# GPU check: {meta.get('host', '?')}, started {meta.get('started', '?')}", ""]
for k, label in (("gpu", "GPU"), ("horovod", "Horovod"), ("budget_s", "time budget (s)"), ("workdir", "work dir"),
                 ("finished", "finished")):
    if meta.get(k):
        md.append(f"- {label}: {cell(meta[k])}")
md.append(f"- steps: {counts['pass']} pass, {counts['fail']} fail, {counts['warn']} warn, {counts['skip']} skip; "
          f"{summary['steps_seconds']} s in steps")
md += ["", "| # | step | status | seconds | key figure | log |", "| --- | --- | --- | ---: | --- | --- |"]
for i, s in enumerate(steps, 1):
    md.append(f"| {i} | {cell(s['step'])} | {s['status'].upper() if s['status'] == 'fail' else s['status']} | "
              f"{s['seconds']:.1f} | {cell(s['key'])} | {cell(s['log'])} |")
with open(os.path.join(outdir, "summary.md.tmp"), "w") as f:
    f.write("\n".join(md) + "\n")
os.replace(os.path.join(outdir, "summary.md.tmp"), os.path.join(outdir, "summary.md"))
sys.exit(1 if counts["fail"] else 0)
PY
}

# ---- arguments ----------------------------------------------------------------------------------
PACK=0
OUTDIR=""
if [ "${1:-}" = --summarize ]; then
    [ -n "${2:-}" ] && [ -f "$2/steps.tsv" ] || { echo "$ME: error: --summarize LOGDIR: no LOGDIR/steps.tsv (got '${2:-}')" >&2; exit 2; }
    summarize "$2" "${3:-$2}"
    exit $?
fi
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run) export DRY_RUN=1 ;;
        --pack) PACK=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "$ME: error: unknown option '$1'" >&2; usage ;;
        *) [ -z "$OUTDIR" ] || { echo "$ME: error: one OUTDIR only (got '$OUTDIR' and '$1')" >&2; usage; }
           OUTDIR="$1" ;;
    esac
    shift
done
OUTDIR="${OUTDIR:-${OUT:-$ROOT/runs/gpu-check}}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
STEP_S="${GPU_CHECK_STEP_S:-150}"
LONG_S=$(( STEP_S > 240 ? STEP_S : 240 ))
for pair in "GPU_CHECK_BUDGET_S=$BUDGET_S" "GPU_CHECK_STEP_S=$STEP_S"; do
    [[ "${pair#*=}" =~ ^[1-9][0-9]*$ ]] || { echo "$ME: error: ${pair%%=*} must be a positive integer (got '${pair#*=}')" >&2; exit 2; }
done

if is_dry_run; then
    WORK="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/hvd-stgnn-gpu-check.XXXXXX}"
    echo "# $ME dry run: results would go to $OUTDIR$([ "$PACK" = 1 ] && echo ' (packed)'), work files to $WORK;" \
         "budget ${BUDGET_S} s, ${STEP_S} s per step"
else
    mkdir -p "$OUTDIR" || { echo "$ME: error: cannot create OUTDIR $OUTDIR" >&2; exit 2; }
    OUTDIR="$(cd "$OUTDIR" && pwd)"
    WORK="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/hvd-stgnn-gpu-check.XXXXXX")}"
    mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
    rm -rf "$WORK/runs" "$WORK/logs"
    mkdir -p "$WORK/runs"
fi
LOGDIR="$OUTDIR"
[ "$PACK" = 0 ] || LOGDIR="$WORK/logs"
if ! is_dry_run; then
    mkdir -p "$LOGDIR"
    # Only what an earlier run of this script wrote here.
    rm -f "$LOGDIR"/[0-9][0-9]-*.log "$LOGDIR"/[0-9][0-9]-*.json "$LOGDIR/steps.tsv" "$LOGDIR/meta.tsv" \
          "$OUTDIR/summary.md" "$OUTDIR/summary.json" "$OUTDIR/gpu_check_logs.tar.gz"
fi

cd "$ROOT" || exit 2
[ -d "$ROOT/.venv/bin" ] && export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONUNBUFFERED=1

# ---- recording -----------------------------------------------------------------------------------
N=0
LAST_RC=0
START_US=""
now_us() { local t="$EPOCHREALTIME"; echo "${t/[.,]/}"; }
meta() { is_dry_run || printf '%s\t%s\n' "$1" "$(flat "$2")" >>"$LOGDIR/meta.tsv"; }
flat() { local s="${*//$'\t'/ }"; echo "${s//$'\n'/ }"; }
record() {  # STEP EXPECT STATE RC SECONDS LOG OUT KEY LIMIT REASON COMMAND...
    local fields=("${@:1:10}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${fields[@]}" "$(flat "$(quote_words "${@:11}")")" \
        >>"$LOGDIR/steps.tsv"
}
refresh() {  # the summary (and the packed logs) after each step
    summarize "$LOGDIR" "$OUTDIR" >/dev/null 2>&1
    if [ "$PACK" = 1 ]; then
        tar -czf "$OUTDIR/gpu_check_logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null \
            && mv -f "$OUTDIR/gpu_check_logs.tar.gz.tmp" "$OUTDIR/gpu_check_logs.tar.gz"
    fi
}
HVD_MODE=none       # none | cpu | nccl: what the Horovod in .venv can do
BUILT_HERE=0        # this run made .venv (with HOROVOD_GPU_OPERATIONS=NCCL)
has() {  # NEED: is the step's prerequisite there?
    case "$1" in
        horovod-nccl) [ "$HVD_MODE" = nccl ] ;;
        torchrun) command -v torchrun >/dev/null 2>&1 ;;
        *) return 1 ;;
    esac
}
need_reason() {
    case "$1" in
        horovod-nccl) echo "needs a Horovod built with NCCL (this one: $HVD_MODE); see the env-horovod-nccl step" ;;
        torchrun) echo "no torchrun on PATH" ;;
    esac
}

# step [--limit S] [--json] [--needs WHAT] [--no-budget] [--note TEXT] NAME EXPECT KEY COMMAND...
#   EXPECT: ok (exit 0), warn (informational: a failure is a warning), refuse (must exit
#   non-zero with an error line, which matches KEY's line:REGEX, and no traceback; that line
#   is its key figure). KEY: how summarize finds the key figure:
#   line:REGEX (last matching line), first:REGEX, results:FILE.json, gpus, smi,
#   bench-models, bench-batching (the step's JSON output), or "" (none).
step() {
    local limit="$STEP_S" json=0 needs="" budget=1 note=""
    while :; do
        case "$1" in
            --note) note="$2"; shift 2 ;;
            --limit) limit="$2"; shift 2 ;;
            --json) json=1; shift ;;
            --needs) needs="$2"; shift 2 ;;
            --no-budget) budget=0; shift ;;
            *) break ;;
        esac
    done
    local name="$1" expect="$2" key="$3"
    shift 3
    N=$((N + 1))
    local id
    id="$(printf '%02d-%s' "$N" "$name")"
    if is_dry_run; then
        [ -z "$needs" ] || note="needs $needs${note:+; $note}"
        printf '%s: %s%s\n' "$name" "$(quote_words "$@")" "${note:+   # $note}"
        LAST_RC=0
        return 0
    fi
    local log="$id.log" out="" reason=""
    [ "$json" = 0 ] || out="$id.json"
    if [ -n "$needs" ] && ! has "$needs"; then
        record "$name" "$expect" skip - 0 "" "" "$key" "$limit" "$(need_reason "$needs")" "$@"
        refresh
        LAST_RC=0
        return 0
    fi
    if [ "$budget" = 1 ]; then
        local left=$(( BUDGET_S - ($(now_us) - START_US) / 1000000 ))
        if [ "$left" -le 5 ]; then
            record "$name" "$expect" skip - 0 "" "" "$key" "$limit" "over the time budget (GPU_CHECK_BUDGET_S=$BUDGET_S)" "$@"
            refresh
            LAST_RC=0
            return 0
        fi
        if [ "$left" -lt "$limit" ]; then limit="$left"; reason=budget; fi
    fi
    printf '%s: ' "$name" >&2
    printf '$ %s\n' "$(quote_words "$@")" >"$LOGDIR/$log"
    local t0 t1 rc=0
    t0="$(now_us)"
    if [ "$json" = 1 ]; then
        timeout -k 10 "$limit" "$@" >"$LOGDIR/$out" 2>>"$LOGDIR/$log" </dev/null || rc=$?
    else
        timeout -k 10 "$limit" "$@" >>"$LOGDIR/$log" 2>&1 </dev/null || rc=$?
    fi
    t1="$(now_us)"
    local us=$(( t1 - t0 ))
    local secs="$(( us / 1000000 )).$(( us / 100000 % 10 ))"
    printf '# exit status %s after %s s\n' "$rc" "$secs" >>"$LOGDIR/$log"
    record "$name" "$expect" run "$rc" "$secs" "$log" "$out" "$key" "$limit" "$reason" "$@"
    refresh
    echo "exit $rc, $secs s" >&2
    LAST_RC=$rc
    return 0
}

# ---- 0. setup, only when there is no .venv ------------------------------------------------------
meta host "$(hostname 2>/dev/null || echo "${HOSTNAME:-?}")"
meta started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta outdir "$OUTDIR"
meta workdir "$WORK"
meta budget_s "$BUDGET_S"
START_US="$(now_us)"
if is_dry_run; then
    step --no-budget --limit 3600 --note "only when .venv is missing" setup ok "line:^\[setup\] (Horovod|ready)" \
        env "HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-NCCL}" bash tools/setup.sh
elif [ ! -x "$ROOT/.venv/bin/python" ]; then
    step --no-budget --limit 3600 setup ok "line:^\[setup\] (Horovod|ready)" \
        env "HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-NCCL}" bash tools/setup.sh
    BUILT_HERE=1
    export PATH="$ROOT/.venv/bin:$PATH"
    if [ "$LAST_RC" != 0 ] && [ -x "$ROOT/.venv/bin/python" ] && [ ! -x "$ROOT/.venv/bin/hvd-stgnn" ]; then
        # Setup stopped at Horovod (no NCCL build here?): the package alone, to go on with DDP.
        step --no-budget install-package ok "" \
            "$ROOT/.venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
    fi
    START_US="$(now_us)"
fi

# ---- 1. the environment -------------------------------------------------------------------------
TORCH_PROBE='import platform, sys, torch; c = torch.cuda; ok = c.is_available(); v = c.nccl.version() if ok else "-"; p = c.get_device_properties(0) if ok else None; print("versions: python", platform.python_version(), "torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "NCCL", ".".join(map(str, v)) if isinstance(v, tuple) else v, "|", f"{c.device_count()} GPU(s): {p.name} sm_{p.major}{p.minor} {p.total_memory / 2**30:.0f} GiB, bf16 {c.is_bf16_supported()}" if ok else "CUDA not available to torch"); sys.exit(0 if ok else 1)'
step env-nvidia-smi-L warn gpus nvidia-smi -L
step env-nvidia-smi warn smi nvidia-smi
step env-torch ok "line:^versions: " python -c "$TORCH_PROBE"
is_dry_run || meta gpu "$(sed -n 's/^versions: //p' "$LOGDIR/$(printf '%02d' "$N")-env-torch.log" 2>/dev/null | head -n1)"
step env-horovodrun warn "first:\[.\] NCCL" horovodrun --check-build
step env-horovod warn "line:^horovod " python tools/horovod_check.py
[ "$LAST_RC" = 0 ] && HVD_MODE=cpu
# With the setup above (HOROVOD_GPU_OPERATIONS=NCCL) the build must be the NCCL one; an
# existing .venv with a CPU-only Horovod is recorded (warn) and the Horovod steps are skipped.
step env-horovod-nccl "$([ "$BUILT_HERE" = 1 ] && echo ok || echo warn)" "line:^horovod " \
    python tools/horovod_check.py --need-nccl
[ "$LAST_RC" = 0 ] && HVD_MODE=nccl
is_dry_run || meta horovod "$HVD_MODE$([ "$HVD_MODE" = nccl ] || echo ': the Horovod steps are skipped, DDP goes on')"

# ---- 2. data ------------------------------------------------------------------------------------
TINY="$WORK/tiny.h5"      # 50 sensors x 2 weeks
METR="$WORK/metr-la.h5"   # 207 sensors x 34,272 steps (METR-LA's shape)
R="$WORK/runs"
step data-tiny ok "line:^wrote " hvd-stgnn data synth --preset tiny --seed 0 --out "$TINY" --quiet
step data-metr-la ok "line:^wrote " hvd-stgnn data synth --preset metr-la --seed 0 --out "$METR" --quiet

# ---- 3. the gpu tests ---------------------------------------------------------------------------
step --limit "$LONG_S" pytest-gpu ok "line:(passed|failed|skipped|error|no tests ran)" \
    python -m pytest -m gpu -rs -q -p no:cacheprovider tests

# ---- 4. training on one GPU ---------------------------------------------------------------------
ONE=(--backend single --device cuda --eval-windows 256 --log-every 10)
step sync-debug ok "line:sync debug:" \
    hvd-stgnn train --data "$TINY" --model tgcn "${ONE[@]}" --epochs 1 --max-steps-per-epoch 12 --sync-debug \
    --results "$R/sync-debug.json"
for model in tgcn a3tgcn dcrnn gwnet; do
    step "train-$model" ok "results:$R/train-$model.json" \
        hvd-stgnn train --data "$METR" --model "$model" "${ONE[@]}" --epochs 1 --batch-size 64 --max-steps-per-epoch 40 \
        --results "$R/train-$model.json"
done
step train-materialized ok "results:$R/materialized.json" \
    hvd-stgnn train --data "$TINY" --model tgcn "${ONE[@]}" --epochs 1 --data-mode materialized --max-steps-per-epoch 30 \
    --results "$R/materialized.json"
step train-global-sync-timings ok "results:$R/global.json" \
    hvd-stgnn train --data "$TINY" --model a3tgcn "${ONE[@]}" --epochs 1 --shuffle global --sync-timings \
    --max-steps-per-epoch 30 \
    --results "$R/global.json"
step train-bf16 ok "results:$R/bf16.json" \
    hvd-stgnn train --data "$METR" --model gwnet "${ONE[@]}" --epochs 1 --batch-size 64 --precision bf16 \
    --max-steps-per-epoch 30 \
    --results "$R/bf16.json"
step train-fp16 ok "results:$R/fp16.json" \
    hvd-stgnn train --data "$TINY" --model dcrnn "${ONE[@]}" --epochs 1 --precision fp16 --max-steps-per-epoch 30 \
    --results "$R/fp16.json"
step resume-stop ok "line:stopping after" \
    hvd-stgnn train --data "$TINY" --model tgcn "${ONE[@]}" --epochs 2 --max-steps-per-epoch 10 \
    --run-dir "$R/resume" --stop-after-epochs 1
step resume-continue ok "line:resumed from" \
    hvd-stgnn train --data "$TINY" --model tgcn "${ONE[@]}" --epochs 2 --max-steps-per-epoch 10 \
    --run-dir "$R/resume" --resume auto

# ---- 5. the checks that must refuse, and DDP on the CPU of a GPU node -----------------------------
# Two ranks, one GPU: the trainer refuses before NCCL would fail (Horovod if it has NCCL, else DDP).
SHARE_BACKEND=ddp
{ [ "$HVD_MODE" = nccl ] || is_dry_run; } && SHARE_BACKEND=horovod
SMALL=(--epochs 1 --max-steps-per-epoch 10 --eval-windows 64)
step --note "--backend ddp without an NCCL Horovod" refuse-2-ranks-1-gpu refuse "line:(?i)rank.*GPU|GPU.*rank" \
    env CUDA_VISIBLE_DEVICES=0 jobs/local.sh -np 2 hvd-stgnn train --data "$TINY" --device cuda \
    --backend "$SHARE_BACKEND" "${SMALL[@]}"
step refuse-no-visible-gpu refuse "line:(?i)CUDA|GPU" \
    env CUDA_VISIBLE_DEVICES= hvd-stgnn train --data "$TINY" --device cuda --backend single "${SMALL[@]}"
step ddp-cpu-1-rank ok "results:$R/ddp-cpu-1.json" \
    hvd-stgnn train --data "$TINY" --backend ddp --device cpu "${SMALL[@]}" --results "$R/ddp-cpu-1.json"
step ddp-cpu-2-ranks ok "results:$R/ddp-cpu-2.json" \
    jobs/local.sh -np 2 hvd-stgnn train --data "$TINY" --backend ddp --device cpu "${SMALL[@]}" \
    --results "$R/ddp-cpu-2.json"

# ---- 6. the launchers, each with a timeline and its report ---------------------------------------
TL=(--device cuda --epochs 1 --max-steps-per-epoch 12 --eval-windows 64 --timeline-steps 2:5)
step --needs horovod-nccl hvd-np1 ok "results:$R/hvd.json" \
    jobs/local.sh -np 1 hvd-stgnn train --data "$TINY" --backend horovod "${TL[@]}" --timeline "$R/hvd-timeline.json" \
    --results "$R/hvd.json"
step --needs horovod-nccl hvd-np1-timeline ok "first:allreduce wall" \
    hvd-stgnn timeline "$R/hvd-timeline.json" --results "$R/hvd.json"
step ddp-mpirun ok "results:$R/ddp-mpirun.json" \
    jobs/local.sh -np 1 hvd-stgnn train --data "$TINY" --backend ddp "${TL[@]}" --timeline "$R/ddp-mpirun-trace.json" \
    --results "$R/ddp-mpirun.json"
step ddp-mpirun-timeline ok "first:allreduce wall" \
    hvd-stgnn timeline "$R/ddp-mpirun-trace.json" --results "$R/ddp-mpirun.json"
step --needs torchrun ddp-torchrun ok "results:$R/ddp-torchrun.json" \
    torchrun --standalone --nproc_per_node 1 -m hvd_stgnn train --data "$TINY" --backend ddp "${TL[@]}" \
    --timeline "$R/ddp-torchrun-trace.json" --results "$R/ddp-torchrun.json"
step --needs torchrun ddp-torchrun-timeline ok "first:allreduce wall" \
    hvd-stgnn timeline "$R/ddp-torchrun-trace.json" --results "$R/ddp-torchrun.json"

# ---- 7. benchmarks (JSON) -----------------------------------------------------------------------
step --json bench-batching ok bench-batching hvd-stgnn bench batching --device cuda --json
step --json bench-models ok bench-models hvd-stgnn bench models --device cuda --json
step --json bench-models-bf16 ok bench-models hvd-stgnn bench models --device cuda --precision bf16 --nodes 207 --json
# The CUDA `--graph-mode auto` rule (dense up to 2,048 sensors) is an estimate: sparse beside it.
step --json bench-models-sparse ok bench-models hvd-stgnn bench models --device cuda --graph-mode sparse --nodes 207,2048 --json
# --compile last: the slowest step (compiling every model), the first to go when time is short.
step --limit "$LONG_S" train-compile ok "results:$R/compile.json" \
    hvd-stgnn train --data "$METR" --model tgcn "${ONE[@]}" --epochs 1 --batch-size 64 --compile --max-steps-per-epoch 40 \
    --results "$R/compile.json"
step --json --limit "$LONG_S" bench-models-compile ok bench-models \
    hvd-stgnn bench models --device cuda --compile --nodes 207 --json

# ---- the verdict ----------------------------------------------------------------------------------
if is_dry_run; then
    exit 0
fi
meta finished "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(( ($(now_us) - START_US) / 1000000 )) s after setup"
summarize "$LOGDIR" "$OUTDIR" >/dev/null 2>&1
rc=$?
[ "$PACK" = 0 ] || refresh
echo "$ME: $(sed -n 's/^- steps: //p' "$OUTDIR/summary.md")"
echo "$ME: summary: $OUTDIR/summary.md ($([ "$PACK" = 1 ] && echo "logs in $OUTDIR/gpu_check_logs.tar.gz" || echo "logs beside it")); work files: $WORK"
exit "$rc"
