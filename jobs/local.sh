#!/usr/bin/env bash
# jobs/local.sh: start an MPI job on THIS machine with mpirun. Every local run uses it:
# `make run`, the test suite (tests/conftest.py run_mpi) and `hvd-stgnn bench load`.
#
# Usage:   jobs/local.sh [-np N] COMMAND [ARGS...]          (N defaults to 2)
#   jobs/local.sh -np 2 hvd-stgnn train --data data/tiny.h5 --model tgcn --epochs 3
#   DRY_RUN=1 jobs/local.sh -np 4 hvd-stgnn train ...      # print the mpirun line, run nothing
#   OMP_NUM_THREADS=1 jobs/local.sh -np 1 hvd-stgnn train ...   # 1 thread on a busy box
#
# Nothing to edit. What it sets, so that nothing else has to know:
#   - Open MPI refuses to run as root: OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1, only when root;
#   - more ranks than cores (`nproc`): --oversubscribe;
#   - the project's .venv/bin first on PATH, so `hvd-stgnn` / `python` are the project's;
#   - threads per rank: OMP_NUM_THREADS = cores / ranks (at least 1) unless already set.
#     With more than 1 thread per rank: --bind-to none (Open MPI binds each rank to ONE
#     core for -np <= 2, where its threads would spin against each other);
#   - OMPI_MCA_mpi_yield_when_idle=1 when ranks x threads fill every core (unless set):
#     a rank waiting in MPI yields its core instead of spinning (Horovod ran 33% slower);
#   - on SMT machines --use-hwthread-cpus, so Open MPI's slots are what `nproc` counts;
#   - when you set OMP_NUM_THREADS yourself and the command is `hvd-stgnn train` without
#     --threads, it adds `--threads $OMP_NUM_THREADS` (the trainer's own default is
#     cores / ranks on the node, the same as this script's default).
# Optional environment:
#   MPIRUN_ARGS="--report-bindings"   extra mpirun options (split on spaces)
#   HVD_STGNN_JEMALLOC=1              run the ranks with jemalloc (LD_PRELOAD) and
#                                     MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 (keeps
#                                     freed pages: no page-fault churn at PeMS scale); a
#                                     warning and the default allocator if no library is found;
#                                     HVD_STGNN_JEMALLOC_LIB=/path/libjemalloc.so.2 to choose one
#   DRY_RUN=1                         print the launch line (shell-quoted) and exit 0
# docs/LAUNCHING.md has the details for this and the cluster scripts.
set -euo pipefail

ME=jobs/local.sh
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck source=common.sh
source "$ROOT/jobs/common.sh"  # quote_words, jemalloc_prefix, add_threads_flag, is_dry_run

NP=2
if [ "${1:-}" = "-np" ] || [ "${1:-}" = "-n" ]; then
    NP="${2:-}"
    shift $(( $# >= 2 ? 2 : 1 ))
fi
if ! [[ "$NP" =~ ^[1-9][0-9]*$ ]]; then
    echo "$ME: error: -np must be a positive integer (got '$NP')" >&2
    exit 2
fi
if [ "$#" -eq 0 ]; then
    echo "usage: $ME [-np N] COMMAND [ARGS...]   (e.g. $ME -np 2 hvd-stgnn train --data data/tiny.h5)" >&2
    exit 2
fi
CMD=("$@")

if [ -d "$ROOT/.venv/bin" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
CORES="$(nproc)"
if [ -n "${OMP_NUM_THREADS:-}" ]; then
    if ! [[ "$OMP_NUM_THREADS" =~ ^[1-9][0-9]*$ ]]; then
        echo "$ME: error: OMP_NUM_THREADS must be a positive integer (got '$OMP_NUM_THREADS')" >&2
        exit 2
    fi
    add_threads_flag
else
    export OMP_NUM_THREADS=$(( CORES / NP > 0 ? CORES / NP : 1 ))
fi

# When the ranks' compute threads fill every core, a rank waiting in MPI (Horovod's
# background thread polls for the allreduce) must yield its core instead of spinning: with
# spinning, Horovod steps ran 33% slower than DDP's here (42.7 vs 32.8 ms, T-GCN, metr-la
# shape, 2 ranks x 1 thread on 2 cores); with yielding, the same (31.5 ms). Kept if set.
if [ $(( NP * OMP_NUM_THREADS )) -ge "$CORES" ] && [ -z "${OMPI_MCA_mpi_yield_when_idle:-}" ]; then
    export OMPI_MCA_mpi_yield_when_idle=1
fi

ARGS=(-np "$NP")
if [ "$NP" -gt "$CORES" ]; then
    ARGS+=(--oversubscribe)
fi
# With SMT, `nproc` counts hardware threads but Open MPI counts slots in cores: make it count
# hardware threads too, so --oversubscribe is added exactly when it is needed.
if [ "$(cat /sys/devices/system/cpu/smt/active 2>/dev/null || echo 0)" = 1 ]; then
    ARGS+=(--use-hwthread-cpus)
fi
# Open MPI binds each rank to one core (or hardware thread) for -np <= 2: a rank's threads
# would then share that one core. Let them run where the OS puts them instead.
if [ "$OMP_NUM_THREADS" -gt 1 ]; then
    ARGS+=(--bind-to none)
fi
# shellcheck disable=SC2206  # MPIRUN_ARGS is a list of words on purpose
ARGS+=(${MPIRUN_ARGS:-})
jemalloc_prefix

LINE=(mpirun "${ARGS[@]}" ${PRELOAD[@]+"${PRELOAD[@]}"} "${CMD[@]}")
if is_dry_run; then
    quote_words "${LINE[@]}"
    exit 0
fi
exec "${LINE[@]}"
