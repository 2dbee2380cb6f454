#!/usr/bin/env python3
"""tools/horovod_check.py: is this Python's Horovod the one hvd_stgnn needs? One line and an exit status.

Usage:   python tools/horovod_check.py [--need-cuda] [--need-nccl]
  (no flag)     Horovod imports (after mpi4py, as the trainer does) and was built with MPI
                and PyTorch: what CPU training needs
  --need-cuda   ... and with CUDA (hvd.cuda_built(); ROCm counts too): GPU tensors can be
                reduced at all (HOROVOD_GPU_OPERATIONS=MPI, CUDA-aware MPI)
  --need-nccl   ... and with NCCL (hvd.nccl_built(), implies --need-cuda): what a build with
                HOROVOD_GPU_OPERATIONS=NCCL gives, and what GPU training under Horovod wants
Prints one line, `horovod 0.28.1: MPI yes, Gloo yes, CUDA no, NCCL no, ROCm no`, on stdout and
exits 0 when the build has what was asked; else one line starting `horovod_check: error:` on
stderr naming what is missing, exit status 1. Bad usage: exit status 2.

Used by tools/setup.sh (keep the installed Horovod, or rebuild it for the GPU settings) and
tools/gpu_check.sh (the environment probe). Importing mpi4py.MPI initialises MPI, so outside
a launcher this is an MPI singleton: a second or two.
"""

from __future__ import annotations

import argparse
import sys

ME = "horovod_check"


def describe(hvd, version: str) -> tuple[str, dict]:
    """The one-line summary of a loaded horovod.torch and the flags it is made of."""
    nccl = hvd.nccl_built()  # an int in Horovod 0.28 (the NCCL version code, 0 when absent)
    built = {
        "mpi": bool(hvd.mpi_built()),
        "gloo": bool(hvd.gloo_built()),
        "cuda": bool(hvd.cuda_built()),
        "nccl": bool(nccl),
        "rocm": bool(getattr(hvd, "rocm_built", lambda: False)()),
    }
    yes = {True: "yes", False: "no"}
    line = (f"horovod {version}: MPI {yes[built['mpi']]}, Gloo {yes[built['gloo']]}, CUDA {yes[built['cuda']]}, "
            f"NCCL {yes[built['nccl']]}{f' ({nccl})' if built['nccl'] and not isinstance(nccl, bool) else ''}, "
            f"ROCm {yes[built['rocm']]}")
    return line, built


def missing(built: dict, need_cuda: bool, need_nccl: bool) -> list[str]:
    """What the build lacks of what was asked, as words for the error line."""
    lacks = []
    if not built["mpi"]:
        lacks.append("MPI (hvd.mpi_built() is False: rebuild with HOROVOD_WITH_MPI=1 against the system MPI)")
    if (need_cuda or need_nccl) and not (built["cuda"] or built["rocm"]):
        lacks.append("CUDA (hvd.cuda_built() is False)")
    if need_nccl and not built["nccl"]:
        lacks.append("NCCL (hvd.nccl_built() is 0)")
    return lacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/horovod_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--need-cuda", action="store_true", help="require a CUDA (or ROCm) build")
    parser.add_argument("--need-nccl", action="store_true", help="require an NCCL build (implies --need-cuda)")
    args = parser.parse_args(argv)
    try:
        import mpi4py.MPI  # noqa: F401  (the trainer initialises MPI through mpi4py before Horovod)
        import horovod
        import horovod.torch as hvd
    except Exception as exc:  # ImportError, or an OSError from a library built for another torch/MPI
        text = " ".join(str(exc).split())
        print(f"{ME}: error: Horovod for PyTorch does not import in {sys.executable}: "
              f"{type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    line, built = describe(hvd, getattr(horovod, "__version__", "?"))
    lacks = missing(built, args.need_cuda, args.need_nccl)
    if lacks:
        hint = ""
        if args.need_nccl or args.need_cuda:
            hint = ("; GPU training under Horovod needs a build with HOROVOD_GPU_OPERATIONS=NCCL "
                    "(tools/setup.sh rebuilds it when that is set)")
        print(f"{ME}: error: {line}: lacks {' and '.join(lacks)}{hint}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
