"""A Ray Train worker's in-memory shard: which rows each rank keeps, and the batches it trains on (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from raymlops.errors import DataError
from raymlops.train.loop import in_memory_seed, numpy_batches, shard_arrays


def blocks(n: int, sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """A split of ``n`` rows cut into blocks of ``sizes`` rows (as Ray Data hands them over)."""
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.float32)
    out, start = [], 0
    for size in sizes:
        out.append({"x_num": x[start:start + size], "x_cat": x[start:start + size, :1].astype(np.int64),
                    "y": y[start:start + size]})
        start += size
    assert start == n
    return out


def test_one_rank_keeps_every_row_in_order_whatever_the_blocks():
    whole = shard_arrays(blocks(10, [10]), 0, 1, equal=True)
    cut = shard_arrays(blocks(10, [3, 0, 7]), 0, 1, equal=True)
    for key in ("x_num", "x_cat", "y"):
        np.testing.assert_array_equal(whole[key], cut[key])
    np.testing.assert_array_equal(whole["y"], np.arange(10))
    assert whole["x_num"].shape == (10, 2) and whole["x_cat"].dtype == np.int64


def test_training_shards_are_disjoint_and_equal_so_ddp_ranks_step_together():
    shards = [shard_arrays(blocks(11, [4, 7]), rank, 3, equal=True)["y"] for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # 11 // 3: the remainder is dropped, as streaming_split(equal)
    rows = np.concatenate(shards)
    assert len(set(rows.tolist())) == 9
    np.testing.assert_array_equal(shards[1], [1, 4, 7])  # every world-th row: the same rows on every run


def test_validation_shards_cover_every_row_once():
    shards = [shard_arrays(blocks(11, [5, 6]), rank, 3, equal=False)["y"] for rank in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))


def test_an_empty_shard_says_what_to_check():
    with pytest.raises(DataError, match="data.split"):
        shard_arrays([], 0, 1, equal=True)


def test_rank_zero_epochs_are_the_single_process_loops_batches():
    arrays = shard_arrays(blocks(50, [20, 30]), 0, 1, equal=True)
    # train_local shuffles epoch e with seed + e: one Ray Train worker sees exactly those batches
    ray_worker = list(numpy_batches(arrays, 8, True, in_memory_seed(7, 3, 0)))
    local = list(numpy_batches(arrays, 8, True, 7 + 3))
    assert len(ray_worker) == len(local) == 7
    for a, b in zip(ray_worker, local, strict=True):
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in ("x_num", "x_cat", "y"))
    # and every epoch draws a new order, and each rank its own
    assert in_memory_seed(7, 3, 0) != in_memory_seed(7, 4, 0) != in_memory_seed(7, 4, 1)
