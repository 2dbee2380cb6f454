"""Batch sources: shard slices and halos, index == materialized, shuffle modes, determinism."""

import sys

import numpy as np
import pytest
import torch

from hvd_stgnn.batching import WindowGather, shard_range, split_starts, window_starts
from hvd_stgnn.batching.sources import BatchingSpec, build_sources

L, H = 12, 3
SPEC = BatchingSpec(L, H, mean=50.0, std=10.0, with_day_of_week=True)


def _series(T=400, N=5, seed=0):
    rng = np.random.default_rng(seed)
    speed = rng.uniform(20, 70, size=(T, N)).astype(np.float32)
    speed[rng.random((T, N)) < 0.05] = 0.0
    speed[100:104, 1] = np.nan
    return speed, 1_704_067_200 + 300 * np.arange(T, dtype=np.int64)


def _splits(T):
    return split_starts(len(window_starts(T, L, H))).as_dict()


def _same(a, b):
    for name in ("x", "y", "mask"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_shard_sources_hold_only_their_steps_and_match_the_full_series(size):
    speed, ts = _series()
    splits = _splits(len(ts))
    full = WindowGather(torch.from_numpy(speed), ts, L, H, SPEC.mean, SPEC.std, with_day_of_week=True)
    for rank in range(size):
        sources = build_sources(speed, ts, splits, SPEC, rank, size, seed=0)
        train = sources["train"]
        shard = shard_range(splits["train"], rank, size)
        # The halo: exactly the steps from the first start to the last start's last target.
        assert (train.gather.step_offset, train.gather.step_offset + train.gather.series.shape[0]) == (
            shard.start, shard.stop - 1 + L + H)
        # A zero-copy view of the (node-shared) array on CPU, not a second copy.
        assert train.shares_node_memory
        assert train.gather.series.data_ptr() == speed[shard.start:].ctypes.data
        edges = torch.tensor([shard.start, shard.start + 1, shard.stop - 2, shard.stop - 1])
        _same(train(edges), full(edges))
        for name in ("val", "test"):
            src = sources[name]
            starts = src.eval_starts()
            if len(starts):
                _same(src(starts), full(starts))


def test_per_rank_bytes_fall_with_world_size():
    speed, ts = _series(T=2000)
    splits = _splits(len(ts))
    held = {size: build_sources(speed, ts, splits, SPEC, 0, size, seed=0)["train"].device_bytes for size in (1, 2, 4, 8)}
    for size in (2, 4, 8):
        # 1/W of the training steps, plus one halo of L + H - 1 steps.
        assert held[size] <= held[1] / size + (L + H) * speed.shape[1] * 4


def test_materialized_batches_equal_index_batches_for_every_start():
    speed, ts = _series()
    splits = _splits(len(ts))
    index = build_sources(speed, ts, splits, SPEC, 0, 1, seed=0)
    mat = build_sources(speed, ts, splits, SPEC, 0, 1, seed=0, data_mode="materialized")
    for name, split in splits.items():
        starts = torch.from_numpy(split.as_array())
        a, b = index[name], mat[name]
        full = WindowGather(torch.from_numpy(speed), ts, L, H, SPEC.mean, SPEC.std, with_day_of_week=True)
        _same(b(starts), full(starts))
        if name != "train":
            _same(a(starts), b(starts))
    x = mat["train"].x
    assert x.shape == (splits["train"].count, L, speed.shape[1], 3)


def test_materialized_build_samples_pss_while_parts_and_windows_coexist(monkeypatch):
    """The build's transient peak (a split's parts and their concatenation, both alive) is
    where PSS must be sampled for the job's node peak: PSS keeps no peak of its own."""
    import hvd_stgnn.batching.sources as sources

    seen = []

    def sample():
        frame = sys._getframe(1)  # the MaterializedSource being built
        parts, built = frame.f_locals["parts"], frame.f_locals["self"]
        seen.append((sum(p.x.shape[0] for p in parts), built.x.shape[0]))
        return 0

    monkeypatch.setattr(sources, "sample_pss", sample)
    speed, ts = _series()
    splits = _splits(len(ts))
    build_sources(speed, ts, splits, SPEC, 0, 1, seed=0, data_mode="materialized")
    assert seen == [(s.count, s.count) for s in splits.values()]


def test_pss_peak_is_the_largest_sample():
    from hvd_stgnn.profiling.memory import pss_peak_bytes, sample_pss

    first = sample_pss()
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
    second = sample_pss()
    del block
    third = sample_pss()
    assert first > 0 and second > first + (32 << 20)
    assert pss_peak_bytes() >= second >= third


@pytest.mark.parametrize("shuffle,data_mode", [("shard", "index"), ("global", "index"), ("shard", "materialized")])
def test_training_orders(shuffle, data_mode):
    speed, ts = _series()
    splits = _splits(len(ts))
    n = splits["train"].count
    for size in (1, 2, 3, 5):
        per_rank = [build_sources(speed, ts, splits, SPEC, r, size, seed=7, shuffle=shuffle, data_mode=data_mode)["train"]
                    for r in range(size)]
        orders = [src.epoch_starts(1) for src in per_rank]
        assert len({len(o) for o in orders}) == 1, "every rank runs the same number of steps"
        allstarts = torch.cat(orders).numpy()
        assert allstarts.min() >= splits["train"].start and allstarts.max() < splits["train"].stop
        if data_mode == "index":
            assert len(np.unique(allstarts)) == len(allstarts) == (n // size) * size, "disjoint, remainder dropped"
        else:
            assert len(allstarts) == -(-n // size) * size and len(np.unique(allstarts)) == n, "DistributedSampler pads"
        for src, order in zip(per_rank, orders):
            torch.testing.assert_close(src.epoch_starts(1), order)  # same seed, same batches
            assert not torch.equal(src.epoch_starts(2), order)  # another epoch, another order
            assert not torch.equal(torch.sort(order).values, order), "samples shuffled, not only batches"


def test_global_shuffle_keeps_the_whole_series():
    speed, ts = _series()
    src = build_sources(speed, ts, _splits(len(ts)), SPEC, 1, 2, seed=0, shuffle="global")["train"]
    assert src.gather.series.shape[0] == len(ts)


def test_bad_modes():
    speed, ts = _series()
    with pytest.raises(ValueError, match="shuffle"):
        build_sources(speed, ts, _splits(len(ts)), SPEC, 0, 1, seed=0, shuffle="random")
    with pytest.raises(ValueError, match="data mode"):
        build_sources(speed, ts, _splits(len(ts)), SPEC, 0, 1, seed=0, data_mode="lazy")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU-index-batching)")
def test_gpu_shard_is_one_device_copy_and_batches_match_cpu():
    speed, ts = _series()
    splits = _splits(len(ts))
    cpu = build_sources(speed, ts, splits, SPEC, 1, 2, seed=0)["train"]
    gpu = build_sources(speed, ts, splits, SPEC, 1, 2, seed=0, device="cuda")["train"]
    assert gpu.gather.series.is_cuda and not gpu.shares_node_memory
    assert gpu.device_bytes == cpu.device_bytes
    starts = cpu.epoch_starts(1)[:16]
    a, b = cpu(starts), gpu(starts.cuda())
    for name in ("x", "y", "mask"):
        torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), rtol=0, atol=0)
