"""Benchmarks run as real mpirun jobs (`hvd-stgnn bench ...`)."""
