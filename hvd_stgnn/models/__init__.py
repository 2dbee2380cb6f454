"""Model registry: name -> builder(ModelInputs) -> nn.Module.

Contract for every model:
    forward(x: (B, L, N, F), teacher: (B, H, N) | None = None) -> (B, H, N)
predictions of normalized speed. `teacher` is the normalized target (missing entries 0),
passed by the trainer only in training and only to models with `uses_teacher = True`
(DCRNN's scheduled sampling); others ignore it. One static graph is shared by the whole
batch; graph operators are built once in the builder (models/graph.py), dense or sparse as
`graph_mode` and, for "auto", the device the model will run on decide.

`compile_model(model)` (models/compile.py) is what `train --compile` and `bench models
--compile` apply: torch.compile of each model's per-step function (or, for Graph WaveNet, the
whole forward), in place. `prefers_cudnn_benchmark(model)`: whether the trainer should set
torch.backends.cudnn.benchmark on CUDA (Graph WaveNet). Every model runs under CPU or GPU
autocast (bf16; fp16 on a GPU): sparse graph products run in float32 inside it and the
recurrent state stays float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hvd_stgnn.models.a3tgcn import A3TGCN
from hvd_stgnn.models.checkpointing import set_activation_checkpointing
from hvd_stgnn.models.compile import compile_model, prefers_cudnn_benchmark
from hvd_stgnn.models.dcrnn import build_dcrnn
from hvd_stgnn.models.graph import GCNOperator
from hvd_stgnn.models.gwnet import build_gwnet
from hvd_stgnn.models.tgcn import TGCN


@dataclass
class ModelInputs:
    edge_index: torch.Tensor  # (2, E)
    edge_weight: torch.Tensor  # (E,)
    num_nodes: int
    in_features: int
    input_steps: int
    horizon: int
    hidden: int = 64
    graph_mode: str = "auto"  # auto | dense | sparse
    layers: int = 2  # DCRNN: recurrent layers
    diffusion_steps: int = 2  # DCRNN: K; Graph WaveNet: diffusion order
    teacher_decay: int = 0  # DCRNN scheduled sampling: cl_decay_steps (0: off)
    adaptive_adjacency: bool = True  # Graph WaveNet: learned adjacency (dense graphs only)
    self_loop_weight: float = 8.0  # T-GCN, A3T-GCN: weight w of the GCN's self-loops, Â = norm(A + w I)
    activation_checkpointing: str = "none"  # none | step | block (models/checkpointing.py)
    device: str = "cpu"  # where the model will run: graph_mode "auto" chooses dense/sparse per device (graph.prefer_dense)


def _tgcn(m: ModelInputs) -> nn.Module:
    graph = GCNOperator(m.edge_index, m.edge_weight, m.num_nodes, symmetric=True, mode=m.graph_mode,
                         self_loop_weight=m.self_loop_weight, device=m.device)
    return TGCN(graph, m.in_features, m.horizon, hidden=m.hidden)


def _a3tgcn(m: ModelInputs) -> nn.Module:
    graph = GCNOperator(m.edge_index, m.edge_weight, m.num_nodes, symmetric=True, mode=m.graph_mode,
                         self_loop_weight=m.self_loop_weight, device=m.device)
    return A3TGCN(graph, m.in_features, m.horizon, hidden=m.hidden)


MODELS: dict[str, Callable[[ModelInputs], nn.Module]] = {
    "tgcn": _tgcn,
    "a3tgcn": _a3tgcn,
    "dcrnn": build_dcrnn,
    "gwnet": build_gwnet,
}


def build_model(name: str, inputs: ModelInputs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    return set_activation_checkpointing(MODELS[name](inputs), name, inputs.activation_checkpointing)


__all__ = ["MODELS", "ModelInputs", "build_model", "compile_model", "prefers_cudnn_benchmark"]
