"""`hvd-stgnn bench models`: train-step milliseconds per model (forward + backward + Adam).

A synthetic graph from the generator (the road-network structure, a handful of neighbours
per sensor) and random normalized inputs: x (B, L, N, F=2), targets (B, H, N). Graph
operators dense or sparse as `graph_mode` (and, for `auto`, the device) picks them.

Every variant of one (sensor count, model) is built first: ours in eager mode and/or with
`compile_model` (`--compile`, `--compile=both`), under `--precision`, and with
`--against-pgt` PyTorch Geometric Temporal's counterpart (bench/pgt.py, always fp32 eager).
Each is warmed up (compiled variants longer: their first steps compile), then the variants
are timed round-robin, one step each per round, so that a change of machine load hits them
alike; a row's `step_ms` is the median over its rounds, and `pgt_over_ours` is the PGT
variant's median over ours, from the same rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from hvd_stgnn.data.synthetic import SyntheticTraffic
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.models import MODELS, ModelInputs, build_model, compile_model

# Hidden units per model unless --hidden says otherwise: the trainer's default, except that
# the A3T-GCN target is stated for hidden 32.
DEFAULT_HIDDEN = 64
HIDDEN: dict[str, int] = {"a3tgcn": 32}
LARGE_NODES = 2048  # above this: the sparse path and --large-batch-size
COMPILE_CHOICES = ("off", "on", "both")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILED_WARMUP = 3  # the first compiled steps compile the forward, then the backward


@dataclass
class Variant:
    """One model under test and the row it reports."""

    row: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: object  # hvd_stgnn.train.precision.Precision
    warmup: int
    times: list[float] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"--device cuda: no GPU to run on ({why}; torch {torch.__version__})")
    return torch.device(name)


def _graph_kind(model: torch.nn.Module) -> str:
    dense = [m.dense for m in model.modules() if isinstance(getattr(m, "dense", None), bool)]
    return "dense" if dense and all(dense) else "sparse" if dense else "none"


def _variant(row: dict, model: torch.nn.Module, device: torch.device, precision: str, warmup: int) -> Variant:
    from hvd_stgnn.train.precision import Precision

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Variant(row, model, optimizer, Precision(precision, device), warmup)


def _step(v: Variant, x: torch.Tensor, y: torch.Tensor) -> float:
    """One training step; its seconds (CUDA: synchronized before and after)."""
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    teacher = y if getattr(v.model, "uses_teacher", False) else None
    loss = (v.precision.forward(v.model, x, teacher) - y).abs().mean()
    v.optimizer.zero_grad()
    v.precision.backward(loss)
    if v.precision.scaler is not None:
        v.precision.scaler.step(v.optimizer)
        v.precision.scaler.update()
    else:
        v.optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def build_variants(name: str, num_nodes: int, batch_size: int, input_steps: int = 12, horizon: int = 12,
                   hidden: int = DEFAULT_HIDDEN, layers: int = 2, graph_mode: str = "auto", compile: str = "off",
                   precision: str = "fp32", device: str = "cpu", against_pgt: bool = False, warmup: int = 2,
                   seed: int = 0) -> list[Variant]:
    """Ours (eager and/or compiled, as `compile` says) and, with `against_pgt`, PGT's model."""
    if compile not in COMPILE_CHOICES:
        raise ConfigError(f"--compile: {compile!r} is not one of {', '.join(COMPILE_CHOICES)}")
    dev = _device(device)
    net = SyntheticTraffic(num_nodes, 1, seed=seed).network
    edge_index, edge_weight = torch.from_numpy(net.edge_index), torch.from_numpy(net.edge_weight)
    inputs = ModelInputs(edge_index, edge_weight, num_nodes, in_features=2, input_steps=input_steps, horizon=horizon,
                         hidden=hidden, graph_mode=graph_mode, layers=layers, device=dev.type)
    base = {"model": name, "nodes": num_nodes, "batch_size": batch_size, "hidden": hidden,
            "layers": layers if name == "dcrnn" else None, "device": dev.type,
            "threads": torch.get_num_threads()}
    variants = []
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[compile]:
        torch.manual_seed(seed)
        model = build_model(name, inputs)
        row = {**base, "impl": "hvd_stgnn", "graph": _graph_kind(model), "compile": compiled,
               "precision": precision, "parameters": sum(p.numel() for p in model.parameters())}
        v = _variant(row, model, dev, precision, max(warmup, COMPILED_WARMUP) if compiled else warmup)
        if compiled:
            v.model = compile_model(v.model)
        variants.append(v)
    if against_pgt and name in _pgt_models():
        from hvd_stgnn.bench import pgt

        torch.manual_seed(seed)
        model = pgt.build(name, edge_index, edge_weight, 2, input_steps, horizon, hidden, batch_size)
        row = {**base, "impl": f"pgt {pgt.load().version}", "graph": "edge list", "compile": False,
               "precision": "fp32", "parameters": sum(p.numel() for p in model.parameters())}
        variants.append(_variant(row, model, dev, "fp32", warmup))
    return variants


def _pgt_models() -> tuple[str, ...]:
    from hvd_stgnn.bench.pgt import MODELS as PGT_MODELS

    return PGT_MODELS


def time_variants(variants: list[Variant], batch_size: int, num_nodes: int, input_steps: int = 12,
                  horizon: int = 12, steps: int = 5, seed: int = 0) -> list[dict]:
    """Warm every variant up, then time them round-robin for `steps` rounds; one row each."""
    device = next(variants[0].model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, input_steps, num_nodes, 2, generator=gen).to(device)
    y = torch.randn(batch_size, horizon, num_nodes, generator=gen).to(device)
    for v in variants:
        t0 = time.perf_counter()
        for _ in range(v.warmup):
            _step(v, x, y)
        v.row["warmup_s"] = round(time.perf_counter() - t0, 2)
    for _ in range(steps):
        for v in variants:
            v.times.append(_step(v, x, y) * 1e3)
    pgt = next((v for v in variants if v.row["impl"].startswith("pgt")), None)
    rows = []
    for v in variants:
        v.row["step_ms"] = statistics.median(v.times)
        v.row["steps_timed"] = len(v.times)
        rows.append(v.row)
    for v in variants:
        v.row["pgt_over_ours"] = (pgt.row["step_ms"] / v.row["step_ms"]) if pgt is not None and v is not pgt else None
    return rows


def step_ms(name: str, num_nodes: int, batch_size: int = 64, input_steps: int = 12, horizon: int = 12,
            hidden: int = DEFAULT_HIDDEN, graph_mode: str = "auto", steps: int = 5, warmup: int = 2, seed: int = 0,
            **options) -> dict:
    """Median ms of one training step of our model `name` (one variant) and its shape;
    `options`: layers, compile ("off" / "on"), precision, device."""
    variants = build_variants(name, num_nodes, batch_size, input_steps, horizon, hidden, graph_mode=graph_mode,
                              warmup=warmup, seed=seed, **options)
    return time_variants(variants, batch_size, num_nodes, input_steps, horizon, steps, seed)[0]


def parse_models(text: str) -> list[str]:
    """--models 'tgcn,dcrnn' -> the names; '' -> every registered model."""
    names = text.split(",") if text else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {unknown} (choose from {', '.join(MODELS)})")
    return names


def parse_hidden(text: str) -> dict[str, int]:
    """--hidden 'tgcn=64,a3tgcn=32' -> hidden units per model, over the defaults (HIDDEN)."""
    hidden = dict(HIDDEN)
    for item in filter(None, text.split(",")):
        name, _, size = item.partition("=")
        if name not in MODELS:
            raise ConfigError(f"--hidden: unknown model {name!r} in {text!r} (expected MODEL=SIZE,..., "
                              f"MODEL one of {', '.join(MODELS)})")
        try:
            hidden[name] = int(size)
        except ValueError:
            raise ConfigError(f"--hidden: {item!r} is not MODEL=SIZE with a whole number SIZE") from None
    return hidden


def run(models: str, nodes: list[int], batch_size: int, hidden: str, large_batch_size: int, steps: int,
        compile: str = "off", precision: str = "fp32", device: str = "cpu", graph_mode: str = "auto",
        layers: int = 2, against_pgt: bool = False) -> list[dict]:
    """Rows per (sensor count, model): ours per compile setting, then PGT's with --against-pgt.
    `models` and `hidden` are the --models and --hidden texts (parse_models, parse_hidden);
    N > LARGE_NODES uses the sparse path and `large_batch_size`."""
    names, sizes = parse_models(models), parse_hidden(hidden)
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if against_pgt:
        from hvd_stgnn.bench import pgt

        pgt.load()  # one line with the install command when it is missing, before any timing
    rows = []
    for n in nodes:
        large = n > LARGE_NODES
        B = large_batch_size if large else batch_size
        for name in names:
            variants = build_variants(name, n, B, hidden=sizes.get(name, DEFAULT_HIDDEN), layers=layers,
                                      graph_mode="sparse" if large else graph_mode, compile=compile,
                                      precision=precision, device=device, against_pgt=against_pgt)
            rows.extend(time_variants(variants, B, n, steps=steps))
    return rows
