"""Traffic data: the in-memory dataset, the HDF5 format, the synthetic generator."""

from hvd_stgnn.data.dataset import TrafficData
from hvd_stgnn.data.hdf5 import SCHEMA_VERSION, read_dataset, validate_file, write_dataset
from hvd_stgnn.data.synthetic import PRESETS, generate

__all__ = ["PRESETS", "SCHEMA_VERSION", "TrafficData", "generate", "read_dataset", "validate_file", "write_dataset"]
