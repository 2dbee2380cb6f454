"""Traffic data: the in-memory dataset, the HDF5 format, the synthetic generator, importers,
and the node-shared load path (data/loader.py, data/shared.py: import those under MPI only)."""

from hvd_stgnn.data.dataset import TrafficData
from hvd_stgnn.data.hdf5 import (
    SCHEMA_VERSION,
    dataset_writer,
    read_dataset,
    read_metadata,
    read_speed_into,
    validate_file,
    write_dataset,
)
from hvd_stgnn.data.importers import IMPORTERS
from hvd_stgnn.data.synthetic import PRESETS, SyntheticTraffic, generate, write_synthetic

__all__ = [
    "IMPORTERS",
    "PRESETS",
    "SCHEMA_VERSION",
    "SyntheticTraffic",
    "TrafficData",
    "dataset_writer",
    "generate",
    "read_dataset",
    "read_metadata",
    "read_speed_into",
    "validate_file",
    "write_dataset",
    "write_synthetic",
]
