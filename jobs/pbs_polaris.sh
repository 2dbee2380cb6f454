#!/usr/bin/env bash
# jobs/pbs_polaris.sh: PBS Pro job for ALCF Polaris (4 A100 GPUs and 32 cores per node): one
# MPI rank per GPU started by Cray PALS `mpiexec`, Horovod over MPI. Submit from the
# repository root (the job cd's to $PBS_O_WORKDIR and uses its .venv).
#
# Usage:   qsub [-v ARGS="TRAIN FLAGS"] jobs/pbs_polaris.sh          (batch: no arguments)
#          jobs/pbs_polaris.sh COMMAND [ARGS...] | TRAIN FLAGS...     (inside `qsub -I`)
#   qsub -v ARGS="--data /eagle/proj/pems.h5 --model tgcn --epochs 20" jobs/pbs_polaris.sh
#   qsub -l select=8:system=polaris -q prod -v ARGS="--data ..." jobs/pbs_polaris.sh
#   qsub -v CMD="hvd-stgnn bench models --preset pems-bay" jobs/pbs_polaris.sh
#   DRY_RUN=1 PBS_NODEFILE=nodes.txt bash jobs/pbs_polaris.sh hvd-stgnn train --data x.h5
# qsub passes no arguments to a job script, hence ARGS (flags for `hvd-stgnn train`) and CMD
# (a whole command); both are split on spaces, and a value holding a comma must be quoted
# for qsub -v:  qsub -v "ARGS='--data x.h5 --split 0.6,0.2,0.2'" jobs/pbs_polaris.sh
#
# What to edit: the #PBS lines below (or override them on the qsub command line): project
# (-A), queue (debug: 1-2 nodes, debug-scaling: up to 10, prod: 10 or more), nodes
# (select=N), walltime, and the filesystems the job reads (home, eagle, grand); and the
# "site environment" block (modules the .venv was built with: mpi4py and Horovod must be
# built against Polaris' Cray MPICH).
#PBS -N hvd-stgnn
#PBS -A YOUR_PROJECT
#PBS -q debug
#PBS -l select=2:system=polaris
#PBS -l place=scatter
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:eagle
#PBS -j oe
#PBS -S /bin/bash
#
# What it sets:
#   - NODES = hosts in $PBS_NODEFILE (one line per node on Polaris; duplicates counted once);
#   - mpiexec -n NODES*RANKS_PER_NODE --ppn RANKS_PER_NODE --depth=DEPTH --cpu-bind depth:
#     4 ranks per node, each bound to its own 8 cores (rank 0: cores 0-7, ...);
#   - OMP_NUM_THREADS = DEPTH (yours wins if set; a warning if larger), and
#     `--threads $OMP_NUM_THREADS` for `hvd-stgnn train` without --threads (the trainer's own
#     default counts all 64 hardware threads of the node);
#   - GPUs: every rank is started through a small inline wrapper (bash -c) that sets
#     CUDA_VISIBLE_DEVICES to ONE GPU from its PMI_LOCAL_RANK, in reverse order: on Polaris
#     cores 0-7 are closest to GPU 3, so local rank 0 (cores 0-7) gets GPU 3, rank 3 GPU 0
#     (the mapping of ALCF's set_affinity_gpu_polaris.sh). Inline, not a separate file, so
#     the job needs nothing else on the compute nodes. A rank then sees one GPU and
#     `--device auto` uses it;
#   - stopping and resuming as jobs/slurm.sbatch does: SIGTERM (PBS at the walltime, qdel)
#     or SIGUSR1 (`qsig -s USR1 JOB`, e.g. from a watcher before the walltime) to this
#     script is forwarded to mpiexec as SIGTERM, so every rank checkpoints and stops; and
#     `hvd-stgnn train ... --run-dir DIR` without --resume/--overwrite gets `--resume auto`
#     (a resubmitted job, `qsub -W depend=afterany:JOB`, continues; a first one starts fresh);
#   - MPICH_MAX_THREAD_SAFETY=multiple (unless set): Cray MPICH grants no more thread support
#     than this names (serialized by default, `man intro_mpi`), and Horovod's background
#     thread needs MPI_THREAD_MULTIPLE;
#   - GPUs per node (GPUS_PER_NODE, else what `nvidia-smi -L` lists on the node running this
#     script, else Polaris' 4) against RANKS_PER_NODE: more ranks than GPUs would put two
#     ranks on one GPU (NCCL then fails with an opaque error), so the script stops first with
#     one line and exit status 2 (not for GPUS_PER_NODE=0 or `hvd-stgnn train --device cpu`);
#   - the environment (PATH with .venv/bin, OMP_NUM_THREADS, HOROVOD_* knobs, NCCL_*) reaches
#     every rank: PALS mpiexec passes the environment on by default. The job log lists the
#     HOROVOD_*, NCCL_* and MPICH_MAX_THREAD_SAFETY settings in effect.
# NCCL hints (none is set here; export them in the site block):
#   NCCL_DEBUG=INFO            a first run: NCCL prints its version, the network it chose
#                              (NET/IB, NET/Socket, NET/AWS Libfabric) and its rings/trees
#   NCCL_SOCKET_IFNAME=hsn     the interface(s) for NCCL's bootstrap and socket traffic (a
#                              prefix matches: hsn0..hsn3 on Polaris' Slingshot; ^lo excludes)
#   NCCL_IB_HCA=mlx5_0:1,...   InfiniBand/RoCE clusters: the adapters (and ports) NCCL may use
#   NCCL_NET_GDR_LEVEL=PHB     GPUDirect RDMA when NIC and GPU are on one NUMA node (LOC,
#                              PIX, PXB, PHB, SYS: how far apart they may be)
#   NCCL_NET="AWS Libfabric"   Polaris: use the aws-ofi-nccl plugin (Slingshot) or fail, instead
#                              of falling back to slow TCP sockets; see the site block above.
# Optional environment:
#   RANKS_PER_NODE=4       ranks per node (default 4, one per GPU)
#   DEPTH=8                cores (hardware threads) per rank for --depth (default 8)
#   GPUS_PER_NODE=4        GPUs per node for the wrapper and the ranks-per-GPU check; 0 =
#                          CPU-only, no wrapper (default: `nvidia-smi -L` count, else 4)
#   GPU_AFFINITY=reverse   reverse (Polaris), direct (local rank r -> GPU r), none (no wrapper:
#                          all GPUs visible, --device auto takes local rank mod GPUs)
#   MPIEXEC_ARGS="..."     extra mpiexec options (split on spaces)
#   HVD_STGNN_ROOT=/path   the repository, if you did not submit from it
#   HVD_STGNN_JEMALLOC=1   ranks run with jemalloc (see jobs/local.sh; HVD_STGNN_JEMALLOC_LIB)
#   ALLOW_GPU_SHARING=1    skip the ranks-per-GPU check (a command that shares GPUs on purpose;
#                          the trainer itself still refuses it on CUDA)
#   MPICH_MAX_THREAD_SAFETY=...   kept when set (default here: multiple)
#   DRY_RUN=1              print the launch line and exit 0 (PBS_NODEFILE may be a fake file)
set -euo pipefail

ME=jobs/pbs_polaris.sh
# PBS runs a copy of this script from its spool directory: use the submit directory.
ROOT="${HVD_STGNN_ROOT:-${PBS_O_WORKDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"

# ---- site environment: EDIT to load what the .venv was built with, e.g. on Polaris ------
# module use /soft/modulefiles && module load conda && conda activate base
# export HOROVOD_FUSION_THRESHOLD=$((64 * 1024 * 1024)) HOROVOD_CYCLE_TIME=5
# export NCCL_DEBUG=INFO          # a first run: NCCL's version, chosen network and rings in the log
# NCCL over Slingshot through the aws-ofi-nccl plugin: ALCF's recommended settings (check
# https://docs.alcf.anl.gov/polaris/applications-and-libraries/libraries/nccl for the current
# plugin path and version before using them):
# export NCCL_NET_GDR_LEVEL=PHB NCCL_CROSS_NIC=1 NCCL_COLLNET_ENABLE=1 NCCL_NET="AWS Libfabric"
# export LD_LIBRARY_PATH=/soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib:/soft/libraries/hwloc/lib:$LD_LIBRARY_PATH
# export FI_CXI_DISABLE_HOST_REGISTER=1 FI_MR_CACHE_MONITOR=userfaultfd FI_CXI_DEFAULT_CQ_SIZE=131072
# -----------------------------------------------------------------------------------------

# ---- the same helpers as jobs/common.sh, copied: the scheduler runs a spooled copy of -----
# ---- this script, which may not find the repository to source them from -------------------
quote_words() {  # the words as one line a shell would read back as the same words
    local w sq="'" out=()
    for w in "$@"; do
        if [[ "$w" =~ ^[A-Za-z0-9_./:=,+@%^-]+$ ]]; then out+=("$w"); else out+=("'${w//$sq/$sq\\$sq$sq}'"); fi
    done
    echo "${out[*]}"
}
jemalloc_prefix() {  # sets PRELOAD=(env LD_PRELOAD=... MALLOC_CONF=...) when asked and found
    PRELOAD=()
    [ "${HVD_STGNN_JEMALLOC:-0}" = 1 ] || return 0
    local lib="${HVD_STGNN_JEMALLOC_LIB:-}" c
    if [ -z "$lib" ]; then
        for c in $(ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 /{print $NF}' || true) \
                 /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2 \
                 "${CONDA_PREFIX:-/nonexistent}/lib/libjemalloc.so.2"; do
            if [ -f "$c" ]; then lib="$c"; break; fi
        done
    fi
    if [ -n "$lib" ] && [ -f "$lib" ]; then
        PRELOAD=(env "LD_PRELOAD=$lib${LD_PRELOAD:+:$LD_PRELOAD}" "MALLOC_CONF=${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}")
    else
        echo "$ME: warning: HVD_STGNN_JEMALLOC=1 but no libjemalloc.so.2 found${lib:+ at $lib}" \
             "(apt-get install libjemalloc2, or set HVD_STGNN_JEMALLOC_LIB); using the default allocator" >&2
    fi
}
add_threads_flag() {  # `hvd-stgnn train ...` without --threads: add --threads $OMP_NUM_THREADS
    [ "${#CMD[@]}" -ge 2 ] && [ "${CMD[0]##*/}" = hvd-stgnn ] && [ "${CMD[1]}" = train ] || return 0
    local w
    for w in "${CMD[@]:2}"; do case "$w" in --threads|--threads=*) return 0 ;; esac; done
    CMD=("${CMD[0]}" train --threads "$OMP_NUM_THREADS" "${CMD[@]:2}")
}
is_dry_run() { case "${DRY_RUN:-0}" in 0|"") return 1 ;; *) return 0 ;; esac; }
# ---- the same as in jobs/slurm.sbatch: resuming by default, the ranks-per-GPU check, ----
# ---- forwarding a stop signal -------------------------------------------------------------
add_resume_flag() {  # `hvd-stgnn train ... --run-dir D` without --resume/--overwrite: add --resume auto
    [ "${#CMD[@]}" -ge 2 ] && [ "${CMD[0]##*/}" = hvd-stgnn ] && [ "${CMD[1]}" = train ] || return 0
    local w has_dir=0
    for w in "${CMD[@]:2}"; do
        case "$w" in --resume|--resume=*|--overwrite|--no-overwrite) return 0 ;; --run-dir|--run-dir=*) has_dir=1 ;; esac
    done
    [ "$has_dir" = 1 ] || return 0
    CMD=("${CMD[0]}" train --resume auto "${CMD[@]:2}")
}
train_device() {  # the --device of a `hvd-stgnn train` command (the last one given), else nothing
    [ "${#CMD[@]}" -ge 2 ] && [ "${CMD[0]##*/}" = hvd-stgnn ] && [ "${CMD[1]}" = train ] || return 0
    local w prev="" dev=""
    for w in "${CMD[@]:2}"; do
        case "$w" in --device=*) dev="${w#--device=}" ;; esac
        [ "$prev" = --device ] && dev="$w"
        prev="$w"
    done
    echo "$dev"
}
gpu_sharing_check() {  # RANKS GPUS WHERE: exit 2 when more ranks than GPUs on a node with GPUs
    local ranks="$1" gpus="$2" where="$3"
    [[ "$ranks" =~ ^[0-9]+$ ]] && [[ "$gpus" =~ ^[0-9]+$ ]] || return 0
    [ "$gpus" -gt 0 ] && [ "$ranks" -gt "$gpus" ] || return 0
    [ "${ALLOW_GPU_SHARING:-0}" = 1 ] && return 0
    [ "$(train_device)" = cpu ] && return 0
    echo "$ME: error: $ranks ranks per node but only $gpus GPUs per node: two ranks would share a GPU" \
         "(NCCL then fails with an opaque error); run one rank per GPU (${where}), or --device cpu for" \
         "CPU training, or ALLOW_GPU_SHARING=1 for a command that shares GPUs on purpose" >&2
    exit 2
}
# -----------------------------------------------------------------------------------------
forward_stop() {  # PID: SIGTERM to mpiexec, which passes it on to every rank
    kill -TERM "$1" 2>/dev/null || true
}
run_forwarding_stop() {  # run LINE as a child; SIGUSR1/SIGTERM here -> SIGTERM to it; its exit status
    set +e
    "${LINE[@]}" &
    local pid=$! rc
    # shellcheck disable=SC2064  # the pid is fixed now
    trap "echo '$ME: SIGUSR1 (time limit near): asking the ranks to checkpoint and stop' >&2; forward_stop $pid" USR1
    # shellcheck disable=SC2064
    trap "echo '$ME: SIGTERM: asking the ranks to checkpoint and stop' >&2; forward_stop $pid" TERM
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done  # a trapped signal interrupts wait
    wait "$pid"
    rc=$?
    trap - USR1 TERM
    set -e
    return "$rc"
}
# -----------------------------------------------------------------------------------------
positive_int() {  # NAME VALUE [allow0]: exit 2 unless VALUE is an integer > 0 (>= 0 with allow0)
    local kind=positive
    [ -n "${3:-}" ] && kind=non-negative
    if ! [[ "$2" =~ ^[0-9]+$ ]] || { [ "$2" -eq 0 ] && [ "$kind" = positive ]; }; then
        echo "$ME: error: $1 must be a $kind integer (got '$2')" >&2
        exit 2
    fi
}
# -----------------------------------------------------------------------------------------

NODEFILE="${PBS_NODEFILE:-}"
if [ -n "$NODEFILE" ] && [ -f "$NODEFILE" ]; then
    NODES="$(sort -u "$NODEFILE" | grep -c . || true)"
elif is_dry_run; then
    NODES=1
    echo "$ME: note: no \$PBS_NODEFILE: showing 1 node" >&2
else
    echo "$ME: error: \$PBS_NODEFILE is not set or missing: submit with qsub (or run it inside qsub -I); DRY_RUN=1 to print the line" >&2
    exit 2
fi
positive_int "nodes in \$PBS_NODEFILE" "$NODES"
cd "$ROOT"
if [ -d "$ROOT/.venv/bin" ]; then
    export PATH="$ROOT/.venv/bin:$PATH"
else
    echo "$ME: warning: no $ROOT/.venv: using hvd-stgnn from PATH (set HVD_STGNN_ROOT to the repository)" >&2
fi

# The command: the arguments, else $CMD, else `hvd-stgnn train` + flags (arguments or $ARGS).
if [ "$#" -gt 0 ] && [[ "$1" != -* ]]; then
    CMD=("$@")
elif [ "$#" -gt 0 ]; then
    CMD=(hvd-stgnn train "$@")
elif [ -n "${CMD:-}" ]; then
    # shellcheck disable=SC2206  # CMD is a list of words on purpose
    CMD=(${CMD})
else
    # shellcheck disable=SC2206  # ARGS is a list of words on purpose
    CMD=(hvd-stgnn train ${ARGS:-})
fi

RANKS_PER_NODE="${RANKS_PER_NODE:-4}"
DEPTH="${DEPTH:-8}"
GPU_AFFINITY="${GPU_AFFINITY:-reverse}"
GPN_FROM="GPUS_PER_NODE"
if [ -z "${GPUS_PER_NODE:-}" ]; then
    GPUS_PER_NODE=4 GPN_FROM="Polaris default"
    if command -v nvidia-smi >/dev/null 2>&1; then
        listed="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
        if [ "${listed:-0}" -gt 0 ]; then
            GPUS_PER_NODE="$listed" GPN_FROM="nvidia-smi -L"
        else
            echo "$ME: note: nvidia-smi lists no GPU on ${HOSTNAME:-this node}: assuming Polaris' 4 per node (set GPUS_PER_NODE)" >&2
        fi
    fi
fi
positive_int RANKS_PER_NODE "$RANKS_PER_NODE"
positive_int DEPTH "$DEPTH"
positive_int GPUS_PER_NODE "$GPUS_PER_NODE" allow0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$DEPTH}"
positive_int OMP_NUM_THREADS "$OMP_NUM_THREADS"
if [ "$OMP_NUM_THREADS" -gt "$DEPTH" ]; then
    echo "$ME: warning: OMP_NUM_THREADS=$OMP_NUM_THREADS > DEPTH=$DEPTH: threads will share cores (slow)" >&2
fi
add_threads_flag
add_resume_flag
jemalloc_prefix
gpu_sharing_check "$RANKS_PER_NODE" "$GPUS_PER_NODE" \
    "RANKS_PER_NODE=$GPUS_PER_NODE; the $GPUS_PER_NODE is from $GPN_FROM, set GPUS_PER_NODE if it is wrong"
# Horovod asks MPI for MPI_THREAD_MULTIPLE; Cray MPICH grants at most what this allows.
export MPICH_MAX_THREAD_SAFETY="${MPICH_MAX_THREAD_SAFETY:-multiple}"

# One GPU per rank from the PALS local rank (see the header).
case "$GPU_AFFINITY" in
    reverse) GPU_EXPR="$(( GPUS_PER_NODE - 1 )) - r % $GPUS_PER_NODE" ;;
    direct) GPU_EXPR="r % $GPUS_PER_NODE" ;;
    none) GPU_EXPR="" ;;
    *) echo "$ME: error: GPU_AFFINITY must be reverse, direct or none (got '$GPU_AFFINITY')" >&2; exit 2 ;;
esac
WRAP=()
if [ "$GPUS_PER_NODE" -gt 0 ] && [ -n "$GPU_EXPR" ]; then
    WRAP=(bash -c "r=\${PMI_LOCAL_RANK:?not set by mpiexec: use GPU_AFFINITY=none}; export CUDA_VISIBLE_DEVICES=\$(($GPU_EXPR)); exec \"\$@\"" gpu-affinity)
fi

# shellcheck disable=SC2206  # MPIEXEC_ARGS is a list of words on purpose
LINE=(mpiexec -n $(( NODES * RANKS_PER_NODE )) --ppn "$RANKS_PER_NODE" --depth="$DEPTH" --cpu-bind depth ${MPIEXEC_ARGS:-}
      ${WRAP[@]+"${WRAP[@]}"} ${PRELOAD[@]+"${PRELOAD[@]}"} "${CMD[@]}")
KNOBS="$(env | grep -E '^(HOROVOD_|NCCL_|MPICH_MAX_THREAD_SAFETY=)' | sort | paste -sd ' ' - || true)"
GPU_NOTE="no GPUs"
[ "$GPUS_PER_NODE" -eq 0 ] || GPU_NOTE="$GPUS_PER_NODE GPU(s) per node ($GPN_FROM)"
echo "$ME: job ${PBS_JOBID:-(none)}: $NODES node(s) x $RANKS_PER_NODE = $(( NODES * RANKS_PER_NODE )) rank(s)," \
     "$OMP_NUM_THREADS thread(s) per rank, GPU affinity: $([ "${#WRAP[@]}" -gt 0 ] && echo "$GPU_AFFINITY" || echo none)," \
     "$GPU_NOTE; $KNOBS" >&2
if is_dry_run; then
    quote_words "${LINE[@]}"
    exit 0
fi
rc=0
run_forwarding_stop || rc=$?
[ "$rc" -eq 0 ] || echo "$ME: job ${PBS_JOBID:-}: mpiexec ended with status $rc" >&2
exit "$rc"
