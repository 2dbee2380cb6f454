"""`hvd-stgnn bench models`: train-step milliseconds per model (forward + backward + Adam).

A synthetic graph from the generator (the road-network structure, a handful of neighbours
per sensor) and random normalized inputs: x (B, L, N, F=2), targets (B, H, N). Median over
timed steps after warm-up. Graph operators dense or sparse as `graph_mode` picks them.
"""

from __future__ import annotations

import statistics
import time

import torch

from hvd_stgnn.data.synthetic import SyntheticTraffic
from hvd_stgnn.errors import ConfigError
from hvd_stgnn.models import MODELS, ModelInputs, build_model


# Hidden units per model unless --hidden says otherwise: the trainer's default, except that
# the A3T-GCN target is stated for hidden 32.
DEFAULT_HIDDEN = 64
HIDDEN: dict[str, int] = {"a3tgcn": 32}


def step_ms(name: str, num_nodes: int, batch_size: int = 64, input_steps: int = 12, horizon: int = 12,
            hidden: int = DEFAULT_HIDDEN, graph_mode: str = "auto", steps: int = 5, warmup: int = 2, seed: int = 0) -> dict:
    """Median ms of one training step of model `name` after `warmup` steps, and its shape."""
    torch.manual_seed(seed)
    net = SyntheticTraffic(num_nodes, 1, seed=seed).network
    model = build_model(name, ModelInputs(
        torch.from_numpy(net.edge_index), torch.from_numpy(net.edge_weight), num_nodes, in_features=2,
        input_steps=input_steps, horizon=horizon, hidden=hidden, graph_mode=graph_mode))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, input_steps, num_nodes, 2)
    y = torch.randn(batch_size, horizon, num_nodes)
    teacher = y if getattr(model, "uses_teacher", False) else None
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = (model(x, teacher) - y).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    dense = [m.dense for m in model.modules() if hasattr(m, "dense") and isinstance(getattr(m, "dense"), bool)]
    return {
        "model": name,
        "nodes": num_nodes,
        "batch_size": batch_size,
        "hidden": hidden,
        "graph": "dense" if dense and all(dense) else "sparse" if dense else "none",
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_ms": statistics.median(times),
        "steps_timed": len(times),
        "threads": torch.get_num_threads(),
    }


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


def run(models: str, nodes: list[int], batch_size: int, hidden: str, large_batch_size: int, steps: int) -> list[dict]:
    """One row per (sensor count, model). `models` and `hidden` are the --models and --hidden
    texts (parse_models, parse_hidden); N > 2048 uses the sparse path and `large_batch_size`."""
    names, sizes = parse_models(models), parse_hidden(hidden)
    rows = []
    for n in nodes:
        large = n > 2048
        for name in names:
            rows.append(step_ms(name, n, large_batch_size if large else batch_size,
                                hidden=sizes.get(name, DEFAULT_HIDDEN), graph_mode="sparse" if large else "auto",
                                steps=steps))
    return rows
