#!/usr/bin/env bash
# Idempotent environment setup for hvd_stgnn; `make setup` runs this.
#
# 1. Open MPI from Debian when `mpirun` is missing; Debian's libjemalloc2 when missing.
# 2. A virtual environment (.venv) with torch, mpi4py (built against the system MPI),
#    h5py, torch-geometric, tqdm, matplotlib, tensorboard, pytest and this package (editable).
# 3. Horovod 0.28.1 for PyTorch + MPI, built from the PyPI sdist with two fixes
#    (C++17 for torch >= 2.1, CMAKE_POLICY_VERSION_MINIMUM for CMake 4), the wheel cached
#    outside the repo keyed by Horovod, torch, Python, MPI and GPU settings.
# 4. A check that Horovod was built with MPI and PyTorch (tools/horovod_check.py) and, when
#    GPU operations are asked for (HOROVOD_GPU_OPERATIONS=NCCL), with CUDA and NCCL: an
#    installed Horovod that lacks them (a CPU build) is rebuilt, and one `[setup] Horovod: ...`
#    line says whether it was kept or rebuilt. Setup fails loudly if the result is unusable.
#
# Usage:   bash tools/setup.sh            (what `make setup` runs; seconds when nothing is missing)
#          bash tools/setup.sh --check    change nothing: say what setup would do, exit 0 when
#                                         nothing is to do and 1 otherwise
#
# Environment knobs:
#   VENV=path                 virtual environment (default: <repo>/.venv)
#   TORCH_VERSION=2.13.0      torch to install when none is importable already
#   HVD_STGNN_CACHE=dir       wheel cache (default: ~/.cache/hvd_stgnn)
#   HOROVOD_GPU_OPERATIONS, HOROVOD_BUILD_CUDA_CC_LIST, HOROVOD_NCCL_HOME, HOROVOD_CUDA_HOME
#                             passed through to the Horovod build (GPU clusters) and part
#                             of the cache key. HOROVOD_GPU_OPERATIONS (or the older
#                             HOROVOD_GPU_ALLREDUCE) =NCCL: the Horovod in .venv must have
#                             hvd.nccl_built() and hvd.cuda_built(), else it is rebuilt; any
#                             other value (MPI): hvd.cuda_built().
set -euo pipefail

CHECK=0
case "${1:-}" in
    "") ;;
    --check) CHECK=1 ;;
    *) echo "usage: bash tools/setup.sh [--check]   (got '$1')" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
HOROVOD_VERSION=0.28.1
CACHE="${HVD_STGNN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvd_stgnn}"
DEPS=(numpy mpi4py h5py torch-geometric tqdm matplotlib tensorboard pytest packaging setuptools wheel cmake tomli-w)

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
TODO=0
would() { say "check: would $*"; TODO=$((TODO + 1)); }  # --check: what setup would do
check_done() {  # --check: the verdict and the exit status
    if [ "$TODO" -eq 0 ]; then say "check: ready, nothing to do"; exit 0; fi
    say "check: setup would change $TODO thing(s)"; exit 1
}

# --- 1. MPI -------------------------------------------------------------------------------
if [ "$CHECK" = 1 ] && { ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; }; then
    would "install Debian's Open MPI (openmpi-bin libopenmpi-dev): mpirun/mpicc not found"
elif ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    say "mpirun/mpicc not found: installing Debian's Open MPI (openmpi-bin libopenmpi-dev)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    command -v apt-get >/dev/null 2>&1 \
        || die "no mpirun and no apt-get: install an MPI (Open MPI or MPICH, with mpicc) and rerun"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
fi
[ "$CHECK" = 1 ] || command -v mpirun >/dev/null 2>&1 || die "mpirun still missing after install"
# --- 1b. jemalloc (HVD_STGNN_JEMALLOC=1, jobs/common.sh; the planner's jemalloc factors are
# tested with it): Debian's libjemalloc2 when no libjemalloc.so.2 is found. Optional: without
# apt-get, a warning (the default malloc still works).
has_jemalloc() {
    ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2 ' && return 0
    compgen -G '/usr/lib/*-linux-gnu/libjemalloc.so.2' >/dev/null || [ -e /usr/lib64/libjemalloc.so.2 ] \
        || [ -e /usr/local/lib/libjemalloc.so.2 ]
}
if ! has_jemalloc; then
    if [ "$CHECK" = 1 ]; then
        would "install Debian's libjemalloc2 (HVD_STGNN_JEMALLOC=1)"
    elif command -v apt-get >/dev/null 2>&1; then
        say "libjemalloc.so.2 not found: installing Debian's libjemalloc2 (HVD_STGNN_JEMALLOC=1)"
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libjemalloc2 >/dev/null; } \
            || say "warning: apt-get install libjemalloc2 failed; HVD_STGNN_JEMALLOC=1 will fall back to malloc"
    else
        say "warning: no libjemalloc.so.2 and no apt-get: HVD_STGNN_JEMALLOC=1 will fall back to malloc"
    fi
fi

MPI_VERSION="$(mpirun --version 2>/dev/null | head -n1 | tr -cs 'A-Za-z0-9.' '-' | sed 's/-$//' || true)"
say "MPI: $MPI_VERSION"

# --- 2. virtual environment --------------------------------------------------------------
if [ "$CHECK" = 1 ] && [ ! -x "$VENV/bin/python" ]; then
    would "create $VENV and install torch, the dependencies, Horovod and hvd_stgnn into it"
    check_done
fi
if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        # Reuse the user's torch (often a site-specific CUDA build) instead of a second one.
        say "creating $VENV (reusing torch $("$PYTHON" -c 'import torch; print(torch.__version__)') from $PYTHON)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ -z "$TORCH_VER" ] && [ "$CHECK" = 1 ]; then
    would "install torch==$TORCH_VERSION"
    TORCH_VER="$TORCH_VERSION"
elif [ -z "$TORCH_VER" ]; then
    say "installing torch==$TORCH_VERSION"
    "${PIP[@]}" install numpy "torch==$TORCH_VERSION"
    TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__)')"
fi
say "torch: $TORCH_VER"

# One interpreter imports every dependency (one process per module took most of a second run).
# shellcheck disable=SC2207  # the names have no spaces
missing=($("$PY" - "${DEPS[@]}" <<'PY' 2>/dev/null || true
import importlib, sys
for dep in sys.argv[1:]:
    try:
        importlib.import_module(dep.replace("-", "_"))
    except Exception:
        print(dep)
PY
))
if [ "${#missing[@]}" -gt 0 ] && [ "$CHECK" = 1 ]; then
    would "install: ${missing[*]}"
elif [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    # mpi4py from source so it links the same MPI library that Horovod and mpirun use.
    "${PIP[@]}" install --no-binary=mpi4py "${missing[@]}"
fi

# PyTorch Geometric Temporal, for `hvd-stgnn bench models --against-pgt` only (its A3TGCN2 and
# BatchedDCRNN run beside ours; its tests run too). --no-deps: its torch-sparse / torch-scatter
# requirements do not build against this torch and the two classes do not use them.
PGT_VERSION=0.56.2
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('torch-geometric-temporal') != '$PGT_VERSION')" \
        >/dev/null 2>&1; then
    if [ "$CHECK" = 1 ]; then
        would "install torch-geometric-temporal==$PGT_VERSION (--no-deps; bench models --against-pgt)"
    else
        say "installing torch-geometric-temporal==$PGT_VERSION (--no-deps; bench models --against-pgt)"
        "${PIP[@]}" install --no-deps "torch-geometric-temporal==$PGT_VERSION"
    fi
fi

# --- 3. Horovod --------------------------------------------------------------------------
# What the Horovod in .venv must have: MPI + PyTorch always; with GPU operations asked for,
# CUDA too, and NCCL when they are NCCL. A CPU build left from an earlier setup fails the
# GPU check and is rebuilt (the wheel cache key holds the GPU settings, so the CPU wheel stays).
HVD_NEED=""
case "${HOROVOD_GPU_OPERATIONS:-}${HOROVOD_GPU_ALLREDUCE:-}" in
    "") ;;
    *NCCL*) HVD_NEED=--need-nccl ;;
    *) HVD_NEED=--need-cuda ;;
esac
HVD_LINE=""
horovod_ok() {  # sets HVD_LINE to tools/horovod_check.py's one line; its exit status
    local rc=0
    # shellcheck disable=SC2086  # HVD_NEED is one flag or nothing
    HVD_LINE="$("$PY" "$ROOT/tools/horovod_check.py" $HVD_NEED 2>&1)" || rc=$?
    HVD_LINE="${HVD_LINE#horovod_check: error: }"
    HVD_LINE="${HVD_LINE%%; GPU training*}"  # the hint is what this script does next
    return "$rc"
}
GPU_SETTINGS="CPU training"
if [ -n "$HVD_NEED" ]; then
    GPU_SETTINGS="HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-}${HOROVOD_GPU_ALLREDUCE:+ HOROVOD_GPU_ALLREDUCE=$HOROVOD_GPU_ALLREDUCE}"
fi

if horovod_ok; then
    say "Horovod: $HVD_LINE: keeping it (has what $GPU_SETTINGS needs)"
else
    PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    GPU_KEY="cpu"
    if [ -n "${HOROVOD_GPU_OPERATIONS:-}${HOROVOD_GPU_ALLREDUCE:-}" ]; then
        GPU_KEY="gpu-${HOROVOD_GPU_OPERATIONS:-}${HOROVOD_GPU_ALLREDUCE:-}-${HOROVOD_BUILD_CUDA_CC_LIST:-default}"
    fi
    KEY="horovod-${HOROVOD_VERSION}_torch-${TORCH_VER}_${PYTAG}_${MPI_VERSION}_${GPU_KEY}"
    KEY="${KEY//[^A-Za-z0-9._-]/-}"
    WHEEL_DIR="$CACHE/$KEY"
    wheel="$(ls "$WHEEL_DIR"/horovod-*.whl 2>/dev/null | head -n1 || true)"
    how="a build from source (about 5 minutes on 2 cores)"
    [ -z "$wheel" ] || how="the cached wheel $wheel"
    HVD_REBUILD=1
    if [ "$CHECK" = 1 ]; then
        would "replace this Horovod ($HVD_LINE) by one for $GPU_SETTINGS from $how (cache key $KEY)"
        HVD_REBUILD=0
    else
        say "Horovod: $HVD_LINE: rebuilding for $GPU_SETTINGS from $how (cache key $KEY)"
    fi
    if [ "$HVD_REBUILD" = 1 ] && [ -z "$wheel" ]; then
        say "building Horovod $HOROVOD_VERSION for torch $TORCH_VER + MPI (about 5 minutes on 2 cores)"
        say "GPU settings: HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS:-} HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-} HOROVOD_NCCL_HOME=${HOROVOD_NCCL_HOME:-}"
        BUILD="$(mktemp -d)"
        trap 'rm -rf "$BUILD"' EXIT
        "${PIP[@]}" download --no-deps --no-binary=:all: -d "$BUILD" "horovod==$HOROVOD_VERSION"
        tar -xzf "$BUILD"/horovod-"$HOROVOD_VERSION".tar.gz -C "$BUILD"
        SRC="$BUILD/horovod-$HOROVOD_VERSION"
        for f in "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"; do
            grep -q 'set(CMAKE_CXX_STANDARD 14)' "$f" || die "unexpected Horovod source: no C++14 line in $f"
            sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$f"
        done
        export CMAKE_POLICY_VERSION_MINIMUM=3.5
        export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1
        export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
        export MAKEFLAGS="-j$(nproc)"
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$BUILD/wheel" "$SRC" \
            > "$BUILD/build.log" 2>&1 || { tail -n 40 "$BUILD/build.log" >&2; die "Horovod build failed (log above)"; }
        mkdir -p "$WHEEL_DIR"
        cp "$BUILD"/wheel/horovod-*.whl "$WHEEL_DIR/"
        wheel="$(ls "$WHEEL_DIR"/horovod-*.whl | head -n1)"
        say "cached $wheel"
    fi
    if [ "$HVD_REBUILD" = 1 ]; then
        "${PIP[@]}" install --no-deps --force-reinstall "$wheel"
        "${PIP[@]}" install "$wheel"  # Horovod's own requirements (cffi, psutil, ... for horovodrun)
        horovod_ok || die "Horovod from $wheel is not usable: $HVD_LINE (delete $WHEEL_DIR to build it again; $VENV/bin/horovodrun --check-build shows what it has)"
        say "Horovod: $HVD_LINE"
    fi
fi
if [ "$CHECK" = 0 ]; then
    "$VENV/bin/horovodrun" --check-build | sed -n '/Available Frameworks/,$p' | sed 's/^/[setup]   /'
fi

# --- 4. the package ----------------------------------------------------------------------
if ! "$PY" -c "import hvd_stgnn, sys; sys.exit(0 if hvd_stgnn.__file__.startswith('$ROOT/') else 1)" >/dev/null 2>&1 \
   || [ ! -x "$VENV/bin/hvd-stgnn" ]; then
    if [ "$CHECK" = 1 ]; then
        would "install hvd_stgnn (editable) into $VENV"
    else
        say "installing hvd_stgnn (editable)"
        "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
    fi
fi
[ "$CHECK" = 0 ] || check_done
say "ready: $VENV ($("$PY" -c 'import horovod, mpi4py, h5py, torch_geometric as g; print(f"horovod {horovod.__version__}, mpi4py {mpi4py.__version__}, h5py {h5py.__version__}, torch_geometric {g.__version__}")'))"
