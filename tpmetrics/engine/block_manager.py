"""Paged KV cache bookkeeping: a fixed pool of blocks with prefix caching.

Each block holds the KV of `block_size` consecutive token positions of one
request. A full block whose KV is computed gets a hash that chains the hash of
the block before it with its own token ids, so equal hashes mean equal
prefixes. Freed hashed blocks stay in the cache until a new allocation evicts
them, least recently freed first.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

HASH_ALGORITHM = "sha256"
_ROOT_HASH = b""


def hash_block(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """Hash one full block of token ids, chained to the hash of the block before it."""
    digest = hashlib.sha256(parent_hash)
    digest.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return digest.digest()


@dataclass(slots=True)
class _Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """The cached blocks that hold the longest cached prefix of a token sequence."""

    block_ids: tuple[int, ...]
    block_size: int

    @property
    def num_tokens(self) -> int:
        return len(self.block_ids) * self.block_size


@dataclass(slots=True)
class PrefixCacheCounts:
    """Prefix cache lookups since the last `take_prefix_cache_counts`, in tokens."""

    queries: int = 0
    hits: int = 0


@dataclass(slots=True)
class _Table:
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)


class BlockManager:
    """A pool of `num_blocks` KV blocks shared by all requests of one engine.

    >>> manager = BlockManager(num_blocks=4, block_size=2)
    >>> manager.allocate("a", num_tokens=3)
    True
    >>> manager.block_table("a"), manager.usage
    ((0, 1), 0.5)
    >>> manager.free("a")
    >>> manager.usage
    0.0
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"invalid num_blocks {num_blocks}: it must be at least 1")
        if block_size < 1:
            raise ValueError(f"invalid block_size {block_size}: it must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(block_id) for block_id in range(num_blocks)]
        # Blocks with no reference, in eviction order: unhashed blocks first,
        # then hashed blocks from the least recently freed one.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self._tables: dict[str, _Table] = {}
        self._counts = PrefixCacheCounts()

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no reference, cached ones included: they can be evicted."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks that some request references, from 0 to 1."""
        return (self.num_blocks - len(self._free)) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> tuple[int, ...]:
        table = self._tables.get(request_id)
        return () if table is None else tuple(table.block_ids)

    def lookup(self, token_ids: Sequence[int]) -> PrefixHit:
        """Find the cached full blocks that hold the longest prefix of `token_ids`.

        The last token is never served from the cache, because a step must
        compute it to sample the next token. Changes nothing and counts nothing.
        """
        if not self.enable_prefix_caching:
            return PrefixHit((), self.block_size)
        hits: list[int] = []
        parent = _ROOT_HASH
        for start in range(0, len(token_ids) - self.block_size, self.block_size):
            parent = hash_block(parent, token_ids[start : start + self.block_size])
            block_id = self._cached.get(parent)
            if block_id is None:
                break
            hits.append(block_id)
        return PrefixHit(tuple(hits), self.block_size)

    def count_lookup(self, num_queried_tokens: int, hit: PrefixHit) -> None:
        """Count one prefix cache lookup of `num_queried_tokens` tokens."""
        if self.enable_prefix_caching:
            self._counts.queries += num_queried_tokens
            self._counts.hits += hit.num_tokens

    def take_prefix_cache_counts(self) -> PrefixCacheCounts:
        """Return the lookups counted since the last call, and start counting again."""
        counts, self._counts = self._counts, PrefixCacheCounts()
        return counts

    def allocate(self, request_id: str, num_tokens: int, prefix: PrefixHit | None = None) -> bool:
        """Grow the block table of `request_id` to cover `num_tokens` token positions.

        A request without a table starts one, beginning with the blocks of
        `prefix`. Returns False and changes nothing when too few blocks are free.
        """
        table = self._tables.get(request_id)
        prefix_ids = () if table is not None or prefix is None else prefix.block_ids
        num_held = len(prefix_ids) if table is None else len(table.block_ids)
        num_new = max(self.blocks_needed(num_tokens) - num_held, 0)
        num_reused_free = sum(1 for block_id in prefix_ids if block_id in self._free)
        if num_new + num_reused_free > len(self._free):
            return False
        if table is None:
            table = self._tables[request_id] = _Table()
            for block_id in prefix_ids:
                self._reference(block_id)
            table.block_ids.extend(prefix_ids)
        table.block_ids.extend(self._take_free_block() for _ in range(num_new))
        return True

    def cache_full_blocks(
        self, request_id: str, token_ids: Sequence[int], num_computed: int
    ) -> None:
        """Make the full blocks among the first `num_computed` tokens findable by `lookup`."""
        table = self._tables[request_id]
        if not self.enable_prefix_caching:
            return
        num_full = min(num_computed // self.block_size, len(table.block_ids))
        for index in range(len(table.block_hashes), num_full):
            parent = table.block_hashes[-1] if table.block_hashes else _ROOT_HASH
            start = index * self.block_size
            block_hash = hash_block(parent, token_ids[start : start + self.block_size])
            table.block_hashes.append(block_hash)
            block = self._blocks[table.block_ids[index]]
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
                self._cached[block_hash] = block.block_id

    def free(self, request_id: str) -> None:
        """Release every block of `request_id`; a request without blocks is ignored."""
        table = self._tables.pop(request_id, None)
        if table is None:
            return
        # Later blocks of a sequence are less likely to be shared, so they are
        # freed first and evicted first.
        for block_id in reversed(table.block_ids):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.block_hash is None:
                    self._free.move_to_end(block_id, last=False)

    def _reference(self, block_id: int) -> None:
        self._free.pop(block_id, None)
        self._blocks[block_id].ref_count += 1

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
        block.ref_count = 1
        return block_id
