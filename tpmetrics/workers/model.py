"""A Llama-style decoder shard for one TP rank, with a paged KV cache.

Attention splits its heads across the ranks: the Q, K and V projections are
column-parallel and the output projection is row-parallel, followed by an
all-reduce. The MLP splits the same way: gate and up column-parallel, down
row-parallel, then an all-reduce. Every rank therefore has the full hidden
state between layers and computes the same logits.

Example, on one rank without torch.distributed:

    config, _ = resolve_model("tiny-llama")
    model = build_model(config, None, seed=0)
    model.allocate_kv_cache(num_blocks=8, block_size=16)
    chunk = SequenceChunk("r1", (5, 6, 7), 0, (0,), sample=True)
    model.forward(StepInput(step=0, chunks=(chunk,))).sampled  # {"r1": <token id>}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from safetensors import safe_open
from torch import nn

from tpmetrics.workers.model_config import ModelConfig
from tpmetrics.workers.step import SequenceChunk, StepInput

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Returns this rank's part of a checkpoint tensor, given its Hugging Face
# name and the dimension to split: the whole tensor for None, else slice
# `tp_rank` of `tp_size` equal slices along that dimension.
ShardReader = Callable[[str, int | None], torch.Tensor]


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The greedy next token of each sampled request and the wall time of one forward.

    `forward_time_s` excludes `collective_time_s`, the time spent inside
    all-reduce calls, which includes waiting for the slower ranks.
    """

    sampled: dict[str, int]
    forward_time_s: float
    collective_time_s: float


class CollectiveTimer:
    """All-reduce over the default process group, timing each call with `time.perf_counter()`."""

    def __init__(self, tp_size: int) -> None:
        self.tp_size = tp_size
        self.elapsed_s = 0.0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return tensor
        if tensor.is_cuda:
            # CUDA runs kernels asynchronously: synchronize so that pending
            # compute is not counted as collective time and the all-reduce is.
            torch.cuda.synchronize(tensor.device)
        started = time.perf_counter()
        dist.all_reduce(tensor)
        if tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)
        self.elapsed_s += time.perf_counter() - started
        return tensor


class PagedKVCache:
    """Per layer, K and V tensors of shape `[num_blocks, block_size, local_heads, head_dim]`.

    A slot is `block * block_size + offset`: the row of the K and V tensors
    viewed as `[num_blocks * block_size, local_heads, head_dim]`.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        local_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"KV cache: num_blocks and block_size must be at least 1, "
                f"got {num_blocks} and {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks, block_size, local_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor
    ) -> None:
        self._flat(self.keys[layer]).index_copy_(0, slots, keys)
        self._flat(self.values[layer]).index_copy_(0, slots, values)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self._flat(self.keys[layer]).index_select(0, slots)
        values = self._flat(self.values[layer]).index_select(0, slots)
        return keys, values

    @staticmethod
    def _flat(cache: torch.Tensor) -> torch.Tensor:
        return cache.view(-1, cache.shape[2], cache.shape[3])


@dataclass(frozen=True, slots=True)
class _ChunkSpan:
    """The position of one chunk in the step's flat token batch, and its attention context.

    `context_slots` are the KV slots of positions 0 to the chunk's last
    position. `mask` has shape `[chunk tokens, context]` and is true where a
    query may attend. It is None for a single query, which attends to every slot.
    """

    start: int
    stop: int
    context_slots: torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class _StepLayout:
    token_ids: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    slots: torch.Tensor
    spans: tuple[_ChunkSpan, ...]
    sample_rows: torch.Tensor


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.weight = _parameter((size,), dtype, device)
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        wide = hidden.float()
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(hidden.dtype)


class Attention(nn.Module):
    """This rank's attention heads.

    `qkv_weight` stacks this rank's rows of q_proj, k_proj and v_proj.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        tp_size: int,
        layer: int,
        collective: CollectiveTimer,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.collective = collective
        self.local_heads = config.num_heads // tp_size
        self.head_dim = config.head_dim
        width = self.local_heads * self.head_dim
        self.qkv_weight = _parameter((3 * width, config.hidden_size), dtype, device)
        self.o_weight = _parameter((config.hidden_size, width), dtype, device)

    def forward(
        self, hidden: torch.Tensor, layout: _StepLayout, cache: PagedKVCache
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = F.linear(hidden, self.qkv_weight).view(num_tokens, 3, self.local_heads, -1)
        queries, keys, values = qkv.unbind(1)
        queries = _rotate(queries, layout.cos, layout.sin)
        keys = _rotate(keys, layout.cos, layout.sin)
        cache.write(self.layer, keys, values, layout.slots)

        attended = torch.empty_like(queries)
        for span in layout.spans:
            context_keys, context_values = cache.read(self.layer, span.context_slots)
            attended[span.start : span.stop] = _attend(
                queries[span.start : span.stop], context_keys, context_values, span.mask
            )
        output = F.linear(attended.view(num_tokens, -1), self.o_weight)
        return self.collective.all_reduce(output)

    def load(self, read: ShardReader, prefix: str) -> None:
        names = [f"{prefix}self_attn.{part}_proj.weight" for part in "qkv"]
        _copy(self.qkv_weight, torch.cat([read(name, 0) for name in names]), ", ".join(names))
        o_name = f"{prefix}self_attn.o_proj.weight"
        _copy(self.o_weight, read(o_name, 1), o_name)


class MLP(nn.Module):
    """This rank's part of the SwiGLU MLP.

    `gate_up_weight` stacks this rank's rows of gate_proj and up_proj.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        tp_size: int,
        collective: CollectiveTimer,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.collective = collective
        width = config.intermediate_size // tp_size
        self.gate_up_weight = _parameter((2 * width, config.hidden_size), dtype, device)
        self.down_weight = _parameter((config.hidden_size, width), dtype, device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(hidden, self.gate_up_weight).chunk(2, dim=-1)
        output = F.linear(F.silu(gate) * up, self.down_weight)
        return self.collective.all_reduce(output)

    def load(self, read: ShardReader, prefix: str) -> None:
        names = [f"{prefix}mlp.{part}_proj.weight" for part in ("gate", "up")]
        _copy(self.gate_up_weight, torch.cat([read(name, 0) for name in names]), ", ".join(names))
        down_name = f"{prefix}mlp.down_proj.weight"
        _copy(self.down_weight, read(down_name, 1), down_name)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        *,
        tp_size: int,
        layer: int,
        collective: CollectiveTimer,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.self_attn = Attention(
            config, tp_size=tp_size, layer=layer, collective=collective, dtype=dtype, device=device
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype, device)
        self.mlp = MLP(config, tp_size=tp_size, collective=collective, dtype=dtype, device=device)

    def forward(
        self, hidden: torch.Tensor, layout: _StepLayout, cache: PagedKVCache
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), layout, cache)
        output: torch.Tensor = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return output

    def load(self, read: ShardReader, prefix: str) -> None:
        for norm_name in ("input_layernorm", "post_attention_layernorm"):
            name = f"{prefix}{norm_name}.weight"
            _copy(getattr(self, norm_name).weight, read(name, None), name)
        self.self_attn.load(read, prefix)
        self.mlp.load(read, prefix)


class LlamaShard(nn.Module):
    """The part of a Llama-style decoder on TP rank `tp_rank` of `tp_size`.

    The embedding and lm_head are replicated on every rank rather than split
    by vocabulary: that needs no extra collective, and with the small
    vocabularies of the reference model it costs little memory. Parameters
    are allocated uninitialised; fill them with `load`, or use `build_model`.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        tp_rank: int = 0,
        tp_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        config.check_tp_size(tp_size)
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"invalid TP rank {tp_rank}: expected 0 .. {tp_size - 1}")
        self.config = config
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[config.dtype]
        self.collective = CollectiveTimer(tp_size)
        self.kv_cache: PagedKVCache | None = None

        self.embed_tokens = _parameter(
            (config.vocab_size, config.hidden_size), self.dtype, self.device
        )
        self.layers = nn.ModuleList(
            DecoderLayer(
                config,
                tp_size=tp_size,
                layer=layer,
                collective=self.collective,
                dtype=self.dtype,
                device=self.device,
            )
            for layer in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, self.dtype, self.device)
        self.lm_head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else _parameter((config.vocab_size, config.hidden_size), self.dtype, self.device)
        )
        self.rotary_cos, self.rotary_sin = _rotary_tables(config, self.dtype, self.device)

    def load(self, read: ShardReader) -> None:
        """Copy this rank's slice of every checkpoint tensor into the parameters."""
        with torch.no_grad():
            _copy(
                self.embed_tokens,
                read("model.embed_tokens.weight", None),
                "model.embed_tokens.weight",
            )
            for index, layer in enumerate(self.layers):
                cast(DecoderLayer, layer).load(read, f"model.layers.{index}.")
            _copy(self.norm.weight, read("model.norm.weight", None), "model.norm.weight")
            if not self.config.tie_word_embeddings:
                _copy(self.lm_head, read("lm_head.weight", None), "lm_head.weight")

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """Allocate a zeroed KV cache for this rank's heads, replacing any earlier one."""
        self.kv_cache = PagedKVCache(
            num_layers=self.config.num_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            local_heads=self.config.num_heads // self.tp_size,
            head_dim=self.config.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        return self.kv_cache

    def forward(self, step_input: StepInput) -> ForwardResult:
        """Run one step and return the greedy next token of every chunk with `sample` set."""
        self.collective.elapsed_s = 0.0
        started = time.perf_counter()
        logits = self.compute_logits(step_input)
        # tolist() waits for the device, so the elapsed time covers all of the compute.
        tokens = logits.argmax(dim=-1).tolist()
        elapsed = time.perf_counter() - started
        request_ids = [chunk.request_id for chunk in step_input.chunks if chunk.sample]
        collective = self.collective.elapsed_s
        return ForwardResult(
            dict(zip(request_ids, tokens, strict=True)), elapsed - collective, collective
        )

    def compute_logits(self, step_input: StepInput) -> torch.Tensor:
        """Write the step's K and V into the cache and return float32 logits of the sampled chunks.

        Row i of the result belongs to the i-th chunk with `sample` set, at its last token.
        """
        if self.kv_cache is None:
            raise RuntimeError("the KV cache is not allocated: call allocate_kv_cache first")
        if not step_input.chunks:
            return torch.empty((0, self.config.vocab_size), device=self.device)
        with torch.no_grad():
            layout = self._plan(step_input, self.kv_cache)
            hidden = F.embedding(layout.token_ids, self.embed_tokens)
            for layer in self.layers:
                hidden = layer(hidden, layout, self.kv_cache)
            hidden = self.norm(hidden.index_select(0, layout.sample_rows))
            return F.linear(hidden, self.lm_head).float()

    def _plan(self, step_input: StepInput, cache: PagedKVCache) -> _StepLayout:
        seen: set[str] = set()
        spans: list[_ChunkSpan] = []
        positions: list[torch.Tensor] = []
        slots: list[torch.Tensor] = []
        sample_rows: list[int] = []
        row = 0
        for chunk in step_input.chunks:
            if chunk.request_id in seen:
                raise ValueError(
                    f"step {step_input.step}: request {chunk.request_id!r} has two chunks"
                )
            seen.add(chunk.request_id)
            self._check_chunk(chunk, cache)
            stop_position = chunk.start_position + len(chunk.token_ids)
            context_slots = _slots(chunk.block_table, stop_position, cache.block_size)
            positions.append(torch.arange(chunk.start_position, stop_position))
            slots.append(context_slots[chunk.start_position :])
            spans.append(_span(row, chunk, context_slots, self.device))
            row += len(chunk.token_ids)
            if chunk.sample:
                sample_rows.append(row - 1)

        token_ids = [token for chunk in step_input.chunks for token in chunk.token_ids]
        position_index = torch.cat(positions).to(self.device)
        return _StepLayout(
            token_ids=torch.tensor(token_ids, device=self.device),
            cos=self.rotary_cos[position_index].unsqueeze(1),
            sin=self.rotary_sin[position_index].unsqueeze(1),
            slots=torch.cat(slots).to(self.device),
            spans=tuple(spans),
            sample_rows=torch.tensor(sample_rows, dtype=torch.long, device=self.device),
        )

    def _check_chunk(self, chunk: SequenceChunk, cache: PagedKVCache) -> None:
        name = f"request {chunk.request_id!r}"
        stop_position = chunk.start_position + len(chunk.token_ids)
        if not chunk.token_ids or chunk.start_position < 0:
            raise ValueError(
                f"{name}: a chunk needs at least one token and a start position of at least 0, "
                f"got {len(chunk.token_ids)} tokens at {chunk.start_position}"
            )
        if stop_position > self.config.max_position_embeddings:
            raise ValueError(
                f"{name}: position {stop_position - 1} is beyond the model's "
                f"max_position_embeddings {self.config.max_position_embeddings}"
            )
        if min(chunk.token_ids) < 0 or max(chunk.token_ids) >= self.config.vocab_size:
            raise ValueError(f"{name}: token ids must lie in 0 .. {self.config.vocab_size - 1}")
        if len(chunk.block_table) * cache.block_size < stop_position:
            raise ValueError(
                f"{name}: block table of {len(chunk.block_table)} blocks of {cache.block_size} "
                f"tokens does not cover position {stop_position - 1}"
            )
        if any(not 0 <= block < cache.num_blocks for block in chunk.block_table):
            raise ValueError(
                f"{name}: block table {chunk.block_table} names a block outside "
                f"0 .. {cache.num_blocks - 1}"
            )


def build_model(
    config: ModelConfig,
    weights_dir: Path | None,
    *,
    seed: int = 0,
    tp_rank: int = 0,
    tp_size: int = 1,
    device: torch.device | str = "cpu",
) -> LlamaShard:
    """Build the shard of TP rank `tp_rank` from a checkpoint directory, or from `seed` without one.

    Random weights are drawn in full on every rank from the same seed and then
    sliced, so every TP size computes the same model.
    """
    model = LlamaShard(config, tp_rank=tp_rank, tp_size=tp_size, device=device)
    if weights_dir is None:
        read = memory_reader(random_weights(config, seed), tp_rank, tp_size)
    else:
        read = safetensors_reader(weights_dir, tp_rank, tp_size)
    model.load(read)
    return model


def checkpoint_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Return the Hugging Face name and full shape of every tensor in a checkpoint of `config`."""
    hidden, inner = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, hidden)}
    for index in range(config.num_layers):
        prefix = f"model.layers.{index}."
        for part in "qkvo":
            shapes[f"{prefix}self_attn.{part}_proj.weight"] = (hidden, hidden)
        shapes[f"{prefix}mlp.gate_proj.weight"] = (inner, hidden)
        shapes[f"{prefix}mlp.up_proj.weight"] = (inner, hidden)
        shapes[f"{prefix}mlp.down_proj.weight"] = (hidden, inner)
        shapes[f"{prefix}input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    return shapes


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Draw a full float32 checkpoint from `seed`: the same tensors on every machine and rank.

    Norm weights are ones, the embedding is standard normal, and every
    projection is normal with standard deviation 1 / sqrt(fan-in), so each
    layer changes the hidden state by about as much as it holds.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in checkpoint_shapes(config).items():
        if len(shape) == 1:
            tensors[name] = torch.ones(shape)
            continue
        scale = 1.0 if name == "model.embed_tokens.weight" else shape[1] ** -0.5
        tensors[name] = torch.randn(shape, generator=generator) * scale
    return tensors


def memory_reader(tensors: Mapping[str, torch.Tensor], tp_rank: int, tp_size: int) -> ShardReader:
    """Return a reader that slices the full tensors of an in-memory checkpoint."""

    def read(name: str, split_dim: int | None) -> torch.Tensor:
        if name not in tensors:
            raise ValueError(f"checkpoint has no tensor {name!r}")
        tensor = tensors[name]
        if split_dim is None:
            return tensor
        width = tensor.shape[split_dim] // tp_size
        return tensor.narrow(split_dim, tp_rank * width, width)

    return read


def safetensors_reader(directory: Path, tp_rank: int, tp_size: int) -> ShardReader:
    """Return a reader that loads only this rank's slices from `directory/*.safetensors`."""
    files: dict[str, Path] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), path))

    def read(name: str, split_dim: int | None) -> torch.Tensor:
        if name not in files:
            raise ValueError(f"checkpoint {directory} has no tensor {name!r}")
        with safe_open(files[name], framework="pt") as handle:
            part = handle.get_slice(name)
            if split_dim is None:
                return part[:]  # type: ignore[no-any-return]
            shape = part.get_shape()
            width = shape[split_dim] // tp_size
            index = [slice(None)] * len(shape)
            index[split_dim] = slice(tp_rank * width, (tp_rank + 1) * width)
            return part[tuple(index)]  # type: ignore[no-any-return]

    return read


def _parameter(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


def _copy(parameter: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if tuple(parameter.shape) != tuple(tensor.shape):
        raise ValueError(
            f"checkpoint tensor {name}: expected shape {tuple(parameter.shape)} for this rank, "
            f"got {tuple(tensor.shape)}"
        )
    with torch.no_grad():
        parameter.copy_(tensor)


def _rotary_tables(
    config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return cos and sin of shape `[max_position_embeddings, head_dim]`, halves repeated."""
    dim = config.head_dim
    inverse_frequency = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    )
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    angles = torch.outer(positions, inverse_frequency)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype=dtype, device=device), angles.sin().to(dtype=dtype, device=device)


def _rotate(heads: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings in the Hugging Face Llama layout: halves, not interleaved pairs."""
    first, second = heads.chunk(2, dim=-1)
    return heads * cos + torch.cat([-second, first], dim=-1) * sin


def _attend(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attend `[tokens, heads, dim]` queries to `[context, heads, dim]` keys and values."""
    output = F.scaled_dot_product_attention(
        queries.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1), attn_mask=mask
    )
    return output.transpose(0, 1)


def _slots(block_table: tuple[int, ...], stop_position: int, block_size: int) -> torch.Tensor:
    """Return the KV slots of positions 0 .. stop_position - 1 under `block_table`."""
    positions = torch.arange(stop_position)
    blocks = torch.tensor(block_table, dtype=torch.long)[positions // block_size]
    return blocks * block_size + positions % block_size


def _span(
    row: int, chunk: SequenceChunk, context_slots: torch.Tensor, device: torch.device
) -> _ChunkSpan:
    length = len(chunk.token_ids)
    mask = None
    if length > 1:
        query_positions = torch.arange(chunk.start_position, chunk.start_position + length)
        context_positions = torch.arange(len(context_slots))
        mask = (context_positions[None, :] <= query_positions[:, None]).to(device)
    return _ChunkSpan(row, row + length, context_slots.to(device), mask)
