#!/usr/bin/env bash
# PBS Pro (e.g. Polaris): mpiexec with ranks per node and depth (cores per rank).
#
#   qsub -l select=2:ncpus=64 -l walltime=01:00:00 -v ARGS="--data /scratch/pems.h5 --epochs 20" jobs/pbs.sh
#   DRY_RUN=1 RANKS_PER_NODE=4 ARGS="--data data/tiny.h5" bash jobs/pbs.sh
#PBS -N hvd-stgnn
#PBS -j oe
set -euo pipefail

ROOT="${HVD_STGNN_ROOT:-${PBS_O_WORKDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"
cd "$ROOT"
[ -d "$ROOT/.venv/bin" ] && export PATH="$ROOT/.venv/bin:$PATH"
NODES=1
[ -n "${PBS_NODEFILE:-}" ] && [ -f "$PBS_NODEFILE" ] && NODES="$(sort -u "$PBS_NODEFILE" | wc -l)"
RANKS_PER_NODE="${RANKS_PER_NODE:-4}"
DEPTH="${DEPTH:-8}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$DEPTH}"

# shellcheck disable=SC2206  # ARGS is a list of words on purpose
CMD=(mpiexec -n $((NODES * RANKS_PER_NODE)) --ppn "$RANKS_PER_NODE" --depth "$DEPTH" --cpu-bind depth
     hvd-stgnn train --threads "$OMP_NUM_THREADS" ${ARGS:-})
if [ -n "${DRY_RUN:-}" ]; then
    echo "${CMD[*]}"
    exit 0
fi
exec "${CMD[@]}"
