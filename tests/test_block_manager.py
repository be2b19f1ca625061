"""The paged KV block pool: allocation, freeing, prefix caching and eviction."""

from __future__ import annotations

from tpmetrics.engine.block_manager import BlockManager, PrefixHit, hash_block


def test_allocate_covers_token_positions() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    assert manager.allocate("a", num_tokens=9)
    assert manager.block_table("a") == (0, 1, 2)
    assert manager.usage == 3 / 8


def test_allocate_grows_table_one_block_at_a_time() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    manager.allocate("a", num_tokens=4)
    assert manager.allocate("a", num_tokens=4)
    assert manager.block_table("a") == (0,)
    assert manager.allocate("a", num_tokens=5)
    assert manager.block_table("a") == (0, 1)


def test_allocate_fails_without_change_when_full() -> None:
    manager = BlockManager(num_blocks=2, block_size=4)
    manager.allocate("a", num_tokens=4)
    assert not manager.allocate("b", num_tokens=5)
    assert manager.block_table("b") == ()
    assert manager.num_free_blocks == 1


def test_free_returns_usage_to_zero() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)
    manager.allocate("a", num_tokens=5)
    manager.allocate("b", num_tokens=2)
    manager.free("a")
    manager.free("b")
    assert manager.usage == 0.0
    assert manager.num_free_blocks == 4


def test_free_unknown_request_is_ignored() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)
    manager.free("missing")
    assert manager.usage == 0.0


def test_hash_chains_parent() -> None:
    first = hash_block(b"", [1, 2])
    assert hash_block(first, [3, 4]) != hash_block(b"", [3, 4])


def test_lookup_finds_cached_prefix_after_free() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(10))
    manager.allocate("a", num_tokens=10)
    manager.cache_full_blocks("a", tokens, num_computed=10)
    manager.free("a")
    hit = manager.lookup(tokens)
    assert hit.block_ids == (0, 1)
    assert hit.num_tokens == 8


def test_lookup_leaves_last_token_to_compute() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(8))
    manager.allocate("a", num_tokens=8)
    manager.cache_full_blocks("a", tokens, num_computed=8)
    assert manager.lookup(tokens).num_tokens == 4


def test_lookup_stops_at_first_miss() -> None:
    manager = BlockManager(num_blocks=8, block_size=2)
    manager.allocate("a", num_tokens=6)
    manager.cache_full_blocks("a", [1, 2, 3, 4, 5, 6], num_computed=6)
    assert manager.lookup([1, 2, 9, 9, 5, 6, 7]).num_tokens == 2


def test_partial_block_is_not_cached() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    manager.allocate("a", num_tokens=6)
    manager.cache_full_blocks("a", list(range(6)), num_computed=6)
    assert manager.lookup(list(range(6))).num_tokens == 4


def test_uncomputed_block_is_not_cached() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    manager.allocate("a", num_tokens=8)
    manager.cache_full_blocks("a", list(range(8)), num_computed=3)
    assert manager.lookup(list(range(9))).num_tokens == 0


def test_prefix_blocks_are_shared() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(9))
    manager.allocate("a", num_tokens=9)
    manager.cache_full_blocks("a", tokens, num_computed=9)
    hit = manager.lookup(tokens)
    assert manager.allocate("b", num_tokens=9, prefix=hit)
    assert manager.block_table("b")[:2] == manager.block_table("a")[:2]
    assert manager.usage == 4 / 8


def test_shared_blocks_freed_after_last_reference() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(9))
    manager.allocate("a", num_tokens=9)
    manager.cache_full_blocks("a", tokens, num_computed=9)
    manager.allocate("b", num_tokens=9, prefix=manager.lookup(tokens))
    manager.free("a")
    assert manager.usage == 3 / 8
    manager.free("b")
    assert manager.usage == 0.0


def test_reusing_free_cached_blocks_counts_them() -> None:
    manager = BlockManager(num_blocks=3, block_size=4)
    tokens = list(range(9))
    manager.allocate("a", num_tokens=9)
    manager.cache_full_blocks("a", tokens, num_computed=9)
    manager.free("a")
    hit = manager.lookup(tokens)
    assert not manager.allocate("b", num_tokens=13, prefix=hit)
    assert manager.allocate("b", num_tokens=12, prefix=hit)
    assert manager.usage == 1.0


def test_eviction_forgets_hash() -> None:
    manager = BlockManager(num_blocks=2, block_size=2)
    manager.allocate("a", num_tokens=4)
    manager.cache_full_blocks("a", [1, 2, 3, 4], num_computed=4)
    manager.free("a")
    manager.allocate("b", num_tokens=4)
    assert manager.lookup([1, 2, 3, 4, 5]).num_tokens == 0


def test_eviction_prefers_uncached_blocks() -> None:
    manager = BlockManager(num_blocks=3, block_size=2)
    manager.allocate("a", num_tokens=2)
    manager.cache_full_blocks("a", [1, 2], num_computed=2)
    manager.allocate("b", num_tokens=2)
    manager.free("a")
    manager.free("b")
    manager.allocate("c", num_tokens=4)
    assert manager.lookup([1, 2, 3]).num_tokens == 2


def test_eviction_takes_least_recently_freed() -> None:
    manager = BlockManager(num_blocks=2, block_size=2)
    manager.allocate("a", num_tokens=2)
    manager.cache_full_blocks("a", [1, 2], num_computed=2)
    manager.allocate("b", num_tokens=2)
    manager.cache_full_blocks("b", [3, 4], num_computed=2)
    manager.free("a")
    manager.free("b")
    manager.allocate("c", num_tokens=2)
    assert manager.lookup([1, 2, 0]).num_tokens == 0
    assert manager.lookup([3, 4, 0]).num_tokens == 2


def test_duplicate_content_keeps_first_block() -> None:
    manager = BlockManager(num_blocks=4, block_size=2)
    manager.allocate("a", num_tokens=2)
    manager.allocate("b", num_tokens=2)
    manager.cache_full_blocks("a", [1, 2], num_computed=2)
    manager.cache_full_blocks("b", [1, 2], num_computed=2)
    manager.free("a")
    manager.free("b")
    assert manager.lookup([1, 2, 3]).block_ids == (0,)
    assert manager.usage == 0.0


def test_lookup_counts_in_tokens() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(10))
    manager.allocate("a", num_tokens=10)
    manager.cache_full_blocks("a", tokens, num_computed=10)
    manager.count_lookup(10, manager.lookup(tokens))
    counts = manager.take_prefix_cache_counts()
    assert counts.queries == 10
    assert counts.hits == 8


def test_take_counts_resets() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    manager.count_lookup(5, PrefixHit((), 4))
    manager.take_prefix_cache_counts()
    assert manager.take_prefix_cache_counts().queries == 0


def test_disabled_prefix_caching_finds_nothing() -> None:
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    tokens = list(range(10))
    manager.allocate("a", num_tokens=10)
    manager.cache_full_blocks("a", tokens, num_computed=10)
    manager.count_lookup(10, manager.lookup(tokens))
    assert manager.lookup(tokens).num_tokens == 0
    assert manager.take_prefix_cache_counts().queries == 0
