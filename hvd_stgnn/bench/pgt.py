"""PyTorch Geometric Temporal baselines for `hvd-stgnn bench models --against-pgt`.

The comparison models are PGT's own classes, installed from PyPI and imported, never copied:
A3T-GCN against `A3TGCN2` (PGT's batched A3T-GCN) and DCRNN against `BatchedDCRNN` (the
batched DCRNN of the PGT-I paper's artifact), each with the read-out its examples use (ReLU,
then a Linear to the H horizon steps) so that the step is the same training step as ours:
x (B, L, N, F) -> (B, H, N), masked-free MAE, backward, Adam.

Shapes follow ours: `hidden` is A3TGCN2's `out_channels` and BatchedDCRNN's `out_channels`;
BatchedDCRNN's filter size K counts the terms T_0..T_{K-1} of each direction, so our K
diffusion steps are its K + 1. BatchedDCRNN is an encoder only (12 recurrent steps at L = 12,
read out from the last hidden state); our DCRNN is the paper's encoder-decoder (24 steps,
`--layers` of each), so the comparison is conservative for us.

PGT 0.56.2 declares torch-sparse and torch-scatter as dependencies, which do not build
easily and which these two classes do not use; install it without them (INSTALL). Its
package `__init__` imports every model, some of which need torch-sparse, so `load()`
imports the two submodules without running the package `__init__` files.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

from hvd_stgnn.errors import ConfigError

VERSION = "0.56.2"
INSTALL = f".venv/bin/pip install --no-deps torch-geometric-temporal=={VERSION}"
MODELS = ("a3tgcn", "dcrnn")  # ours that have a PGT counterpart
_PACKAGE = "torch_geometric_temporal"
_SUBMODULES = ("attentiontemporalgcn", "dcrnn")


def installed_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version("torch-geometric-temporal")
    except PackageNotFoundError:
        return None


@functools.cache
def load() -> types.SimpleNamespace:
    """PGT's A3TGCN2 and BatchedDCRNN classes, or ConfigError with the install line."""
    found = installed_version()
    spec = importlib.util.find_spec(_PACKAGE) if found is not None and _PACKAGE not in sys.modules else None
    if found is None or (spec is None and _PACKAGE not in sys.modules):
        raise ConfigError(f"--against-pgt: PyTorch Geometric Temporal is not installed; install it with: {INSTALL}")
    recurrent = f"{_PACKAGE}.nn.recurrent"
    if recurrent not in sys.modules:
        # Parent packages as bare namespaces: their __init__ files import models that need
        # torch-sparse. Only what is not imported yet is stubbed.
        root = (spec.submodule_search_locations if spec else sys.modules[_PACKAGE].__path__)[0]
        for name, sub in ((_PACKAGE, ""), (f"{_PACKAGE}.nn", "/nn"), (recurrent, "/nn/recurrent")):
            if name not in sys.modules:
                stub = types.ModuleType(name)
                stub.__path__ = [root + sub]
                sys.modules[name] = stub
    try:
        a3t = importlib.import_module(f"{recurrent}.attentiontemporalgcn")
        dcrnn = importlib.import_module(f"{recurrent}.dcrnn")
    except ImportError as e:
        raise ConfigError(f"--against-pgt: cannot import PyTorch Geometric Temporal {found} ({e}); "
                          f"install {VERSION} with: {INSTALL}") from None
    return types.SimpleNamespace(version=found, A3TGCN2=a3t.A3TGCN2, BatchedDCRNN=dcrnn.BatchedDCRNN)


class PGTA3TGCN(nn.Module):
    """PGT's A3TGCN2 + ReLU + Linear(hidden, H): x (B, L, N, F) -> (B, H, N)."""

    def __init__(self, pgt, edge_index, edge_weight, in_features: int, input_steps: int, horizon: int,
                 hidden: int, batch_size: int) -> None:
        super().__init__()
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("edge_weight", edge_weight, persistent=False)
        self.net = pgt.A3TGCN2(in_channels=in_features, out_channels=hidden, periods=input_steps,
                               batch_size=batch_size)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x.permute(0, 2, 3, 1), self.edge_index, self.edge_weight)  # (B, N, F, L) -> (B, N, hidden)
        return self.head(F.relu(h)).transpose(1, 2)


class PGTDCRNN(nn.Module):
    """PGT's BatchedDCRNN (encoder) + ReLU + Linear(hidden, H) on the last step: (B, L, N, F) -> (B, H, N)."""

    def __init__(self, pgt, edge_index, edge_weight, in_features: int, horizon: int, hidden: int,
                 diffusion_steps: int) -> None:
        super().__init__()
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("edge_weight", edge_weight, persistent=False)
        self.net = pgt.BatchedDCRNN(in_features, hidden, K=diffusion_steps + 1)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x, self.edge_index, self.edge_weight)[:, -1]  # (B, N, hidden)
        return self.head(F.relu(h)).transpose(1, 2)


def build(name: str, edge_index: torch.Tensor, edge_weight: torch.Tensor, in_features: int, input_steps: int,
          horizon: int, hidden: int, batch_size: int, diffusion_steps: int = 2) -> nn.Module:
    """PGT's counterpart of our model `name` (one of MODELS) at the same shape."""
    pgt = load()
    edge_index, edge_weight = edge_index.long(), edge_weight.float()
    if name == "a3tgcn":
        return PGTA3TGCN(pgt, edge_index, edge_weight, in_features, input_steps, horizon, hidden, batch_size)
    if name == "dcrnn":
        return PGTDCRNN(pgt, edge_index, edge_weight, in_features, horizon, hidden, diffusion_steps)
    raise ValueError(f"no PyTorch Geometric Temporal counterpart for {name!r} (have: {', '.join(MODELS)})")
