"""hvd_stgnn: Horovod + MPI training of spatiotemporal GNNs with index-batching."""

__version__ = "0.1.0"
