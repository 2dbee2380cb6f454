"""The ranks of `hvd-stgnn bench allreduce`: `python -m hvd_stgnn.bench.allreduce_worker`,
started on every rank by `jobs/local.sh -np P` or `srun` (bench/allreduce.py builds the line;
it can be run by hand the same way, e.g. inside an sbatch script:
`srun --mpi=pmix python -m hvd_stgnn.bench.allreduce_worker --out DIR`).

Per backend in --backends, one after the other (only one is initialised at a time, so that
Horovod's background thread does not poll MPI while torch.distributed is timed):

1. the backend is built as training builds it (hvd_stgnn.parallel.make_backend: Horovod over
   mpi4py's COMM_WORLD; DDP's process group, gloo on the CPU, nccl on a GPU);
2. the sweep: for every size, a float32 tensor of ones is allreduced once and checked (every
   element must be P), then zeroed (sums of zeros stay zeros: no overflow, no denormals) and
   allreduced for the remaining warm-up and the timed iterations; every rank times every
   iteration (CUDA: synchronized around it), rank 0 gathers the times;
3. the gradient set of the model (bench/allreduce.py's docstring), timed `--grad-iters`
   times after 3 warm-ups, a barrier before each;
4. the backend is shut down.

Rank 0 fits the ring model and writes allreduce.json/.csv/.md/.png; its progress lines go to
stderr and to OUT/allreduce.progress (which the parent echoes while the job runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path

from hvd_stgnn.bench.allreduce import add_sweep_flags
from hvd_stgnn.bench.allreduce_fit import (
    DDP_DEFAULT_BUCKET_MB, FLOAT32, HOROVOD_DEFAULT_CYCLE_MS, HOROVOD_DEFAULT_FUSION_BYTES, ddp_buckets, fit_rows,
    format_size, horovod_fusion, iterations_for, make_row, predicted_seconds, size_sweep, warmup_for,
)
from hvd_stgnn.bench.allreduce_report import write_outputs
from hvd_stgnn.errors import UserError

PROG = "hvd-stgnn bench allreduce"
MIB = 1 << 20
GRAD_WARMUP = 3
# Environment variables the report records: what tunes the communication (never launcher internals).
TUNING_PREFIXES = ("HOROVOD_", "NCCL_", "GLOO_", "TORCH_GLOO", "OMPI_MCA_mpi_", "OMPI_MCA_btl", "OMPI_MCA_coll",
                   "OMPI_MCA_pml", "OMP_NUM_THREADS", "MPIRUN_ARGS", "SRUN_")


class _Progress:
    """Rank 0's progress lines: stderr and OUT/allreduce.progress."""

    def __init__(self, rank: int, out: Path) -> None:
        self.rank, self.path = rank, out / "allreduce.progress"

    def __call__(self, line: str) -> None:
        if self.rank != 0:
            return
        text = f"bench allreduce: {line}\n"
        sys.stderr.write(text)
        sys.stderr.flush()
        try:
            with open(self.path, "a") as f:
                f.write(text)
        except OSError:
            pass


class _HorovodOps:
    """hvd.allreduce_ (Sum) for the sweep; DistributedOptimizer's pattern for the gradient set."""

    name = "horovod"

    def __init__(self, backend) -> None:
        self.hvd = backend._hvd
        self.fusion_bytes = int(os.environ.get("HOROVOD_FUSION_THRESHOLD") or HOROVOD_DEFAULT_FUSION_BYTES)
        self.cycle_ms = float(os.environ.get("HOROVOD_CYCLE_TIME") or HOROVOD_DEFAULT_CYCLE_MS)

    def detail(self, device) -> str:
        gpu = "NCCL" if device.type == "cuda" else "MPI"
        return (f"hvd.allreduce_ over {gpu}, fusion threshold {format_size(self.fusion_bytes)}, "
                f"cycle time {self.cycle_ms:g} ms")

    def allreduce(self, tensor, name: str) -> None:
        self.hvd.allreduce_(tensor, op=self.hvd.Sum, name=name)

    def prepare_gradients(self, grads: list, names: list[str]):
        return list(zip(grads, [f"allreduce.{n}" for n in names]))

    def messages(self, nbytes: list[int]) -> list[int]:
        return [sum(nbytes[i] for i in group) for group in horovod_fusion(nbytes, self.fusion_bytes)]

    def reduce_gradients(self, prepared) -> None:
        handles = [self.hvd.allreduce_async_(g, name=n, op=self.hvd.Average) for g, n in prepared]
        for h in handles:
            self.hvd.synchronize(h)


class _DistOps:
    """torch.distributed.all_reduce for the sweep; DDP's buckets for the gradient set."""

    name = "ddp"

    def __init__(self, backend, bucket_mb: float) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.size = backend.size
        self.bucket_bytes = int(bucket_mb * MIB)
        self.group_backend = dist.get_backend()

    def detail(self, device) -> str:
        return f"torch.distributed.all_reduce over {self.group_backend}, bucket_cap_mb {self.bucket_bytes / MIB:g}"

    def allreduce(self, tensor, name: str) -> None:
        self.dist.all_reduce(tensor)

    def prepare_gradients(self, grads: list, names: list[str]):
        import torch

        nbytes = [g.numel() * g.element_size() for g in grads]
        # DDP's gradients are views of its flat buckets (gradient_as_bucket_view): no copies.
        return [torch.zeros(sum(nbytes[i] for i in b) // FLOAT32, device=grads[0].device)
                for b in ddp_buckets(nbytes, self.bucket_bytes)]

    def messages(self, nbytes: list[int]) -> list[int]:
        return [sum(nbytes[i] for i in b) for b in ddp_buckets(nbytes, self.bucket_bytes)]

    def reduce_gradients(self, prepared) -> None:
        works = []
        for bucket in prepared:  # DDP's default comm hook: divide by the world size, allreduce (async)
            bucket.div_(self.size)
            works.append(self.dist.all_reduce(bucket, async_op=True))
        for w in works:
            w.wait()


def _timed(fn, cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _per_iteration(all_times: list[list[float]]) -> tuple[list[float], list[float]]:
    """Every rank's iteration times -> (mean over ranks, max over ranks) per iteration."""
    columns = list(zip(*all_times))
    return [statistics.fmean(c) for c in columns], [max(c) for c in columns]


def _time_size(ops, comm, size: int, warm: int, iters: int, device) -> list[float]:
    """This rank's times of `iters` allreduces of `size` bytes, after `warm` warm-ups (the first
    checked). The message lives only in here: freed on return, before the next size's."""
    import torch

    cuda = device.type == "cuda"
    name = f"bench.allreduce.{size}"
    tensor = torch.ones(size // FLOAT32, dtype=torch.float32, device=device)
    comm.Barrier()
    ops.allreduce(tensor, name)  # warm-up 1, checked
    if cuda:
        torch.cuda.synchronize()
    ok = bool((tensor == comm.size).all().item())
    if not all(comm.allgather(ok)):
        raise RuntimeError(f"{ops.name} allreduce of {format_size(size)}: the sum of ones is not {comm.size} "
                           "on every element of every rank")
    tensor.zero_()
    for _ in range(warm - 1):
        ops.allreduce(tensor, name)
    comm.Barrier()
    return [_timed(lambda: ops.allreduce(tensor, name), cuda) for _ in range(iters)]


def sweep(ops, comm, sizes: list[int], args, device, say) -> list[dict]:
    """The rows of one backend (on rank 0; [] elsewhere)."""
    rows = []
    for size in sizes:
        iters = iterations_for(size, args.iters, args.min_iters, args.bytes_per_size)
        warm = warmup_for(iters, args.iters, args.warmup)
        times = _time_size(ops, comm, size, warm, iters, device)
        all_times = comm.gather(times, root=0)
        if comm.rank == 0:
            mean, worst = _per_iteration(all_times)
            row = make_row(ops.name, size, comm.size, mean, worst, warm)
            rows.append(row)
            say(f"{ops.name} {format_size(size):>7}: {row['latency_us']:10.1f} us  busbw "
                f"{row['busbw_gb_per_s']:7.3f} GB/s  ({iters} iterations)")
    return rows


def build_gradient_model(args):
    """The model of --model with the trainer's defaults (or --hidden, --layers) on a synthetic
    road graph of --nodes sensors: its trainable parameters, in the order backward produces
    their gradients (approximately: reversed definition order, DDP's assumption)."""
    import torch

    from hvd_stgnn.config import DataConfig, ModelConfig
    from hvd_stgnn.data.synthetic import SyntheticTraffic
    from hvd_stgnn.models import ModelInputs, build_model

    defaults, data = ModelConfig(), DataConfig()
    hidden = args.hidden or defaults.hidden
    layers = args.layers or defaults.layers
    net = SyntheticTraffic(args.nodes, 1, seed=0).network
    inputs = ModelInputs(torch.from_numpy(net.edge_index), torch.from_numpy(net.edge_weight), args.nodes,
                         in_features=2, input_steps=data.input_steps, horizon=data.horizon, hidden=hidden,
                         graph_mode=defaults.graph_mode, layers=layers, diffusion_steps=defaults.diffusion_steps,
                         teacher_decay=defaults.teacher_decay, adaptive_adjacency=defaults.adaptive_adjacency,
                         self_loop_weight=defaults.self_loop_weight, device=args.device)
    torch.manual_seed(0)
    model = build_model(args.model, inputs)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return list(reversed(params)), hidden, layers


def gradient_set(ops, comm, params, args, device) -> dict:
    """One allreduce of the whole gradient set, `--grad-iters` times: {seconds (median of the
    mean over ranks), seconds_max, message_bytes, iterations, warmup, detail}."""
    import torch

    cuda = device.type == "cuda"
    grads = [torch.zeros(p.shape, dtype=torch.float32, device=device) for _, p in params]
    nbytes = [g.numel() * g.element_size() for g in grads]
    prepared = ops.prepare_gradients(grads, [n for n, _ in params])
    for _ in range(GRAD_WARMUP):
        comm.Barrier()
        ops.reduce_gradients(prepared)
    times = []
    for _ in range(args.grad_iters):
        comm.Barrier()
        times.append(_timed(lambda: ops.reduce_gradients(prepared), cuda))
    all_times = comm.gather(times, root=0)
    if comm.rank != 0:
        return {}
    mean, worst = _per_iteration(all_times)
    return {"seconds": statistics.median(mean), "seconds_max": statistics.median(worst),
            "message_bytes": ops.messages(nbytes), "iterations": args.grad_iters, "warmup": GRAD_WARMUP}


def _versions() -> dict:
    from hvd_stgnn.parallel.launcher import library_versions

    return {"python": platform.python_version(), **library_versions()}


def run(args, comm, say) -> dict | None:
    """Every backend's sweep and gradient set; the result dict on rank 0 (None elsewhere)."""
    from hvd_stgnn.parallel import make_backend
    from hvd_stgnn.parallel.device import device_description

    np_ = comm.size
    hosts = comm.allgather(socket.gethostname())
    cpus = comm.gather(sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [], root=0)
    per_node: dict[str, int] = {}
    for h in hosts:
        per_node[h] = per_node.get(h, 0) + 1
    sizes = size_sweep(args.min_size, args.max_size)
    params, hidden, layers = build_gradient_model(args) if args.grad_iters else ([], 0, 0)
    if args.fusion_threshold_mb >= 0:
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(args.fusion_threshold_mb * MIB))
    if args.cycle_time_ms >= 0:
        os.environ["HOROVOD_CYCLE_TIME"] = f"{args.cycle_time_ms:g}"
    bucket_mb = args.fusion_threshold_mb if args.fusion_threshold_mb >= 0 else DDP_DEFAULT_BUCKET_MB
    say(f"{np_} ranks on {len(per_node)} node(s), {len(sizes)} sizes {format_size(sizes[0])}..{format_size(sizes[-1])}, "
        f"backends {', '.join(args.backends)}, device {args.device}, {args.threads} thread(s) per rank")
    rows: list[dict] = []
    grad: dict = {}
    detail: dict = {}
    device_name = args.device
    for name in args.backends:
        backend = make_backend(name, None, False, args.device)
        try:
            ops = _HorovodOps(backend) if name == "horovod" else _DistOps(backend, bucket_mb)
            device_name = device_description(backend.device)
            detail[name] = ops.detail(backend.device)
            say(f"{name}: {detail[name]}")
            rows += sweep(ops, comm, sizes, args, backend.device, say)
            if params:
                g = gradient_set(ops, comm, params, args, backend.device)
                if g:
                    g["detail"] = detail[name]
                    grad[name] = g
                    say(f"{name}: {args.model} gradient set, {len(g['message_bytes'])} message(s): "
                        f"{g['seconds'] * 1e3:.3f} ms")
            comm.Barrier()
        finally:
            backend.shutdown()
    if comm.rank != 0:
        return None
    fits = fit_rows(rows, np_, args.fit_min_size, args.fit_max_size)
    result = {
        "benchmark": "allreduce",
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": args.command,
        "job_command": args.job_command,
        "machine": _machine(),
        "versions": _versions(),
        "np": np_,
        "nodes": len(per_node),
        "ranks_per_node": per_node,
        "rank_cpus": cpus,  # each rank's CPU affinity (jobs/local.sh binds 1-thread ranks to one core each)
        "launcher": _launcher(),
        "device": args.device,
        "device_name": device_name,
        "threads": args.threads,
        "dtype": "float32",
        "backends": list(args.backends),
        "backend_detail": detail,
        "environment": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(TUNING_PREFIXES)},
        "sizes": sizes,
        "iters": args.iters,
        "min_iters": args.min_iters,
        "warmup": args.warmup,
        "bytes_per_size": args.bytes_per_size,
        "fits": fits,
        **({"fits_range": [args.fit_min_size or sizes[0], args.fit_max_size or sizes[-1]]}
           if args.fit_min_size or args.fit_max_size else {}),
        "rows": rows,
    }
    if params:
        nbytes = [p.numel() * FLOAT32 for _, p in params]
        for name, g in grad.items():
            g["predicted_s"] = predicted_seconds(g["message_bytes"], np_, fits.get(name) if "alpha_s" in fits.get(name, {})
                                                 else None)
        result["gradient_set"] = {"model": args.model, "hidden": hidden, "layers": layers, "nodes": args.nodes,
                                  "tensors": len(params), "bytes": sum(nbytes), "largest_bytes": max(nbytes),
                                  "iterations": args.grad_iters, "warmup": GRAD_WARMUP, **grad}
    return result


def _machine() -> dict:
    """report.machine_info, but the node's cores: a rank's own affinity is what the launcher
    bound it to (one core per 1-thread rank under jobs/local.sh), kept apart as rank_cpus."""
    from hvd_stgnn.bench.report import machine_info

    return {**machine_info(), "cores": os.cpu_count() or 1}


def _launcher() -> str:
    from hvd_stgnn.parallel.launcher import launcher_name

    return launcher_name()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvd_stgnn.bench.allreduce_worker")
    add_sweep_flags(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expect-np", type=int, default=0, help="fail unless the job has this many ranks")
    parser.add_argument("--command", default="", help="the command line for the report")
    parser.add_argument("--job-command", default="", help="the launch prefix for the report")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = Path(args.out)
    say = _Progress(comm.rank, out)
    if comm.size < 2 or (args.expect_np and comm.size != args.expect_np):
        if comm.rank == 0:
            why = ("an allreduce over one rank moves no data, there is nothing to measure; start 2 or more ranks"
                   if comm.size < 2 else f"the job has {comm.size} ranks, not the {args.expect_np} asked for")
            print(f"{PROG}: error: {why}", file=sys.stderr, flush=True)
        return 2
    if not args.command:
        args.command = "python -m hvd_stgnn.bench.allreduce_worker " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args, comm, say)
        if result is not None:
            write_outputs(result, out)
            say(f"wrote {out / 'allreduce.json'}")
        comm.Barrier()
    except UserError as exc:
        if exc.all_ranks:
            if comm.rank == 0:
                print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        print(f"{PROG}: error: [rank {comm.rank}] {exc}", file=sys.stderr, flush=True)
        comm.Abort(exc.exit_code)
    except BaseException:  # noqa: BLE001 - one rank's failure must end the job, not hang its peers
        sys.stderr.write("".join(f"[rank {comm.rank}] {line}\n" for line in traceback.format_exc().splitlines()))
        sys.stderr.flush()
        comm.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
