#!/usr/bin/env bash
# jobs/horovodrun.sh: start a job with Horovod's own launcher, `horovodrun` (from .venv/bin),
# on this machine or on hosts you name. horovodrun builds the mpirun line itself (it adds
# --allow-run-as-root, -bind-to none -map-by slot, and `-x` for every environment variable,
# so the ranks on every host get this script's environment).
#
# Usage:   jobs/horovodrun.sh [-np N] [-H HOST:SLOTS,... | -hostfile FILE] COMMAND [ARGS...]
#   jobs/horovodrun.sh -np 2 hvd-stgnn train --data data/tiny.h5 --model tgcn --epochs 3
#   jobs/horovodrun.sh -H node1:4,node2:4 hvd-stgnn train --data /scratch/pems.h5   # -np 8 implied
#   DRY_RUN=1 jobs/horovodrun.sh -np 4 hvd-stgnn train ...   # print the horovodrun line, run nothing
# Defaults: -np 2; hosts localhost:N; with -H or -hostfile and no -np, N = all their slots.
# Several hosts need passwordless ssh between them, the same repository path (with its .venv)
# on each, and the same cores per host; give the network interface to skip horovodrun's NIC
# discovery: HOROVODRUN_ARGS="--network-interface ib0".
#
# Nothing to edit. What it sets:
#   - the project's .venv/bin first on PATH (horovodrun, hvd-stgnn and python are the project's);
#   - horovodrun --mpi: the MPI controller (the trainer joins MPI_COMM_WORLD through mpi4py);
#   - threads per rank: OMP_NUM_THREADS = cores here / ranks per host (the largest slot count)
#     unless already set; when you set it and the command is `hvd-stgnn train` without
#     --threads, `--threads $OMP_NUM_THREADS` is added (the trainer's own default is cores /
#     ranks on the node, the same as this script's default);
#   - run-as-root: nothing to do (horovodrun passes --allow-run-as-root to Open MPI).
# Optional environment:
#   MPIRUN_ARGS="--report-bindings"   extra mpirun options, given as --mpi-args="..."
#   HOROVODRUN_ARGS="--verbose"       extra horovodrun options (split on spaces), e.g.
#                                     --timeline-filename t.json, --fusion-threshold-mb 64
#   HVD_STGNN_JEMALLOC=1              ranks run with jemalloc (see jobs/local.sh; HVD_STGNN_JEMALLOC_LIB)
#   DRY_RUN=1                         print the launch line (shell-quoted) and exit 0
set -euo pipefail

ME=jobs/horovodrun.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=common.sh
source "$ROOT/jobs/common.sh"  # quote_words, jemalloc_prefix, add_threads_flag, is_dry_run
die() { echo "$ME: error: $*" >&2; exit 2; }

NP="" HOSTS="" HOSTFILE=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        -np|-n) [ "$#" -ge 2 ] || die "$1 needs a number"; NP="$2"; shift 2 ;;
        -H|--hosts) [ "$#" -ge 2 ] || die "$1 needs HOST:SLOTS[,HOST:SLOTS...]"; HOSTS="$2"; shift 2 ;;
        -hostfile|--hostfile) [ "$#" -ge 2 ] || die "$1 needs a file"; HOSTFILE="$2"; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ -z "$HOSTS" ] || [ -z "$HOSTFILE" ] || die "give -H or -hostfile, not both"
if [ "$#" -eq 0 ]; then
    echo "usage: $ME [-np N] [-H HOST:SLOTS,... | -hostfile FILE] COMMAND [ARGS...]" >&2
    exit 2
fi
CMD=("$@")

# Slots per host: from -H (host:slots, slots 1 when omitted) or the hostfile (host slots=N).
SLOTS=()
if [ -n "$HOSTS" ]; then
    IFS=, read -ra ENTRIES <<< "$HOSTS"
    for e in "${ENTRIES[@]}"; do
        [[ "$e" == *:* ]] && SLOTS+=("${e##*:}") || SLOTS+=(1)
    done
elif [ -n "$HOSTFILE" ]; then
    [ -f "$HOSTFILE" ] || die "no hostfile $HOSTFILE"
    while read -r host rest; do
        [ -n "$host" ] && [[ "$host" != \#* ]] || continue
        [[ "$rest" =~ slots=([0-9]+) ]] && SLOTS+=("${BASH_REMATCH[1]}") || SLOTS+=(1)
    done < "$HOSTFILE"
    [ "${#SLOTS[@]}" -gt 0 ] || die "no hosts in $HOSTFILE"
fi
TOTAL=0 PER_HOST=0
for s in ${SLOTS[@]+"${SLOTS[@]}"}; do
    [[ "$s" =~ ^[1-9][0-9]*$ ]] || die "slots must be positive integers (got '$s')"
    TOTAL=$(( TOTAL + s )); [ "$s" -gt "$PER_HOST" ] && PER_HOST="$s"
done
if [ -z "$NP" ]; then
    NP=$(( TOTAL > 0 ? TOTAL : 2 ))
fi
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || die "-np must be a positive integer (got '$NP')"
if [ -z "$HOSTS" ] && [ -z "$HOSTFILE" ]; then
    HOSTS="localhost:$NP" PER_HOST="$NP"
fi
[ "$PER_HOST" -le "$NP" ] || PER_HOST="$NP"

if [ -d "$ROOT/.venv/bin" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
CORES="$(nproc)"
if [ -n "${OMP_NUM_THREADS:-}" ]; then
    [[ "$OMP_NUM_THREADS" =~ ^[1-9][0-9]*$ ]] || die "OMP_NUM_THREADS must be a positive integer (got '$OMP_NUM_THREADS')"
    add_threads_flag
else
    export OMP_NUM_THREADS=$(( CORES / PER_HOST > 0 ? CORES / PER_HOST : 1 ))
fi
jemalloc_prefix

LINE=(horovodrun -np "$NP")
if [ -n "$HOSTFILE" ]; then LINE+=(-hostfile "$HOSTFILE"); else LINE+=(-H "$HOSTS"); fi
LINE+=(--mpi)
if [ -n "${MPIRUN_ARGS:-}" ]; then LINE+=("--mpi-args=$MPIRUN_ARGS"); fi
# shellcheck disable=SC2206  # HOROVODRUN_ARGS is a list of words on purpose
LINE+=(${HOROVODRUN_ARGS:-} ${PRELOAD[@]+"${PRELOAD[@]}"} "${CMD[@]}")
if is_dry_run; then
    quote_words "${LINE[@]}"
    exit 0
fi
exec "${LINE[@]}"
