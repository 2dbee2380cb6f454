"""Model registry: name -> builder(graph inputs, sizes, options) -> nn.Module.

Every model takes x (B, L, N, F) and returns (B, H, N) predictions of normalized speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hvd_stgnn.models.graph import GCNOperator
from hvd_stgnn.models.tgcn import TGCN


@dataclass
class ModelInputs:
    edge_index: torch.Tensor  # (2, E)
    edge_weight: torch.Tensor  # (E,)
    num_nodes: int
    in_features: int
    input_steps: int
    horizon: int
    hidden: int
    graph_mode: str = "auto"


def _tgcn(m: ModelInputs) -> nn.Module:
    graph = GCNOperator(m.edge_index, m.edge_weight, m.num_nodes, symmetric=True, mode=m.graph_mode)
    return TGCN(graph, m.in_features, m.horizon, hidden=m.hidden)


MODELS: dict[str, Callable[[ModelInputs], nn.Module]] = {
    "tgcn": _tgcn,
}


def build_model(name: str, inputs: ModelInputs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    return MODELS[name](inputs)


__all__ = ["MODELS", "ModelInputs", "build_model"]
