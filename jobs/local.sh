#!/usr/bin/env bash
# Launch an MPI job on this machine: the one launcher helper every local run and test uses.
#
#   jobs/local.sh -np 2 hvd-stgnn train --data data/tiny.h5 --epochs 3
#   DRY_RUN=1 jobs/local.sh -np 4 hvd-stgnn train ...   # print the mpirun line only
#
# What it adds to plain mpirun, so nothing else has to know:
#   - Open MPI refuses to run as root without OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM);
#   - more ranks than cores need --oversubscribe;
#   - the project's .venv/bin first on PATH, so `hvd-stgnn` is the project's;
#   - threads per rank = cores / ranks (OMP_NUM_THREADS), unless already set.
# Extra mpirun options: MPIRUN_ARGS="--report-bindings" jobs/local.sh -np 2 ...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NP=2
if [ "${1:-}" = "-np" ] || [ "${1:-}" = "-n" ]; then
    NP="${2:?-np needs a number}"
    shift 2
fi
if ! [[ "$NP" =~ ^[1-9][0-9]*$ ]]; then
    echo "jobs/local.sh: error: -np must be a positive integer (got '$NP')" >&2
    exit 2
fi
if [ "$#" -eq 0 ]; then
    echo "usage: jobs/local.sh [-np N] COMMAND [ARGS...]" >&2
    exit 2
fi

if [ -d "$ROOT/.venv/bin" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
fi
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
CORES="$(nproc)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( CORES / NP > 0 ? CORES / NP : 1 ))}"

ARGS=(-np "$NP")
if [ "$NP" -gt "$CORES" ]; then
    ARGS+=(--oversubscribe)
fi
# shellcheck disable=SC2206  # MPIRUN_ARGS is a list of words on purpose
ARGS+=(${MPIRUN_ARGS:-})

if [ -n "${DRY_RUN:-}" ]; then
    echo "mpirun ${ARGS[*]} $*"
    exit 0
fi
exec mpirun "${ARGS[@]}" "$@"
