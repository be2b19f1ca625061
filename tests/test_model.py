"""The reference model on one rank, without Ray or torch.distributed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
import torch
from safetensors.torch import save_file

from tpmetrics.workers.model import (
    DecoderLayer,
    LlamaShard,
    build_model,
    checkpoint_shapes,
    memory_reader,
    random_weights,
)
from tpmetrics.workers.model_config import ModelConfig, resolve_model
from tpmetrics.workers.step import SequenceChunk, StepInput

CONFIG = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=96,
    max_position_embeddings=256,
    eos_token_id=1,
)
BLOCK_SIZE = 4
PROMPT = (3, 17, 42, 99, 5, 8, 120, 64, 33, 2, 77)


def new_model(seed: int = 0) -> LlamaShard:
    model = build_model(CONFIG, None, seed=seed)
    model.allocate_kv_cache(num_blocks=32, block_size=BLOCK_SIZE)
    return model


def chunk(
    tokens: tuple[int, ...], start: int, table: tuple[int, ...], sample: bool = True
) -> SequenceChunk:
    return SequenceChunk("r", tokens, start, table, sample)


def layer(model: LlamaShard, index: int) -> DecoderLayer:
    return cast(DecoderLayer, model.layers[index])


def logits_of(model: LlamaShard, *chunks: SequenceChunk) -> torch.Tensor:
    return model.compute_logits(StepInput(step=0, chunks=chunks))


def test_kv_cache_shape() -> None:
    model = build_model(CONFIG, None, tp_size=1)
    cache = model.allocate_kv_cache(num_blocks=7, block_size=BLOCK_SIZE)
    assert tuple(cache.keys[1].shape) == (7, BLOCK_SIZE, 4, 16)
    assert tuple(cache.values[1].shape) == (7, BLOCK_SIZE, 4, 16)
    assert len(cache.keys) == 2


def test_logits_one_row_per_sampled_chunk() -> None:
    model = new_model()
    chunks = (
        SequenceChunk("a", PROMPT, 0, (0, 1, 2), sample=True),
        SequenceChunk("b", PROMPT[:5], 0, (3, 4), sample=False),
        SequenceChunk("c", PROMPT[:1], 0, (5,), sample=True),
    )
    logits = logits_of(model, *chunks)
    assert tuple(logits.shape) == (2, CONFIG.vocab_size)
    assert logits.dtype == torch.float32


def test_forward_samples_greedy_tokens() -> None:
    model = new_model()
    step = StepInput(step=3, chunks=(chunk(PROMPT, 0, (0, 1, 2)),))
    result = model.forward(step)
    expected = int(new_model().compute_logits(step).argmax())
    assert result.sampled == {"r": expected}
    assert result.collective_time_s == 0.0
    assert result.forward_time_s > 0.0


def test_chunked_prefill_matches_one_shot() -> None:
    table = (5, 9, 2)
    one_shot = logits_of(new_model(), chunk(PROMPT, 0, table))

    model = new_model()
    logits_of(model, chunk(PROMPT[:4], 0, table, sample=False))
    logits_of(model, chunk(PROMPT[4:9], 4, table, sample=False))
    chunked = logits_of(model, chunk(PROMPT[9:], 9, table))

    torch.testing.assert_close(chunked, one_shot, rtol=1e-5, atol=1e-5)
    assert int(chunked.argmax()) == int(one_shot.argmax())


def test_decode_matches_recompute() -> None:
    table = (7, 3, 11, 0)
    model = new_model()
    tokens = list(PROMPT)
    next_token = int(logits_of(model, chunk(PROMPT, 0, table)).argmax())
    for _ in range(4):
        tokens.append(next_token)
        decoded = logits_of(model, chunk((next_token,), len(tokens) - 1, table))
        recomputed = logits_of(new_model(), chunk(tuple(tokens), 0, table))
        torch.testing.assert_close(decoded, recomputed, rtol=1e-5, atol=1e-5)
        next_token = int(decoded.argmax())


def test_batch_matches_single_requests() -> None:
    first = SequenceChunk("a", PROMPT, 0, (0, 1, 2), sample=True)
    second = SequenceChunk("b", PROMPT[::-1], 0, (3, 4, 5), sample=True)
    batched = logits_of(new_model(), first, second)
    torch.testing.assert_close(batched[0], logits_of(new_model(), first)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], logits_of(new_model(), second)[0], rtol=1e-5, atol=1e-5)


def test_seed_changes_tokens() -> None:
    step = chunk(PROMPT, 0, (0, 1, 2))
    assert not torch.equal(logits_of(new_model(seed=0), step), logits_of(new_model(seed=1), step))


def test_short_block_table_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"block table of 2 blocks of 4 tokens does not cover position 10"
    ):
        logits_of(new_model(), chunk(PROMPT, 0, (0, 1)))


def test_block_outside_cache_rejected() -> None:
    with pytest.raises(ValueError, match=r"names a block outside 0 \.\. 31"):
        logits_of(new_model(), chunk(PROMPT, 0, (0, 1, 32)))


def test_token_outside_vocabulary_rejected() -> None:
    with pytest.raises(ValueError, match=r"token ids must lie in 0 \.\. 127"):
        logits_of(new_model(), chunk((5, 128), 0, (0,)))


def test_forward_without_cache_rejected() -> None:
    model = build_model(CONFIG, None)
    with pytest.raises(RuntimeError, match="allocate_kv_cache"):
        model.forward(StepInput(step=0, chunks=(chunk(PROMPT, 0, (0, 1, 2)),)))


def test_tp_size_must_divide_heads() -> None:
    with pytest.raises(ValueError, match=r"TP size 3 does not divide num_heads 4"):
        LlamaShard(CONFIG, tp_rank=0, tp_size=3)


def test_rank_slices_heads_and_mlp() -> None:
    weights = random_weights(CONFIG, seed=4)
    shard = LlamaShard(CONFIG, tp_rank=1, tp_size=2)
    shard.load(memory_reader(weights, tp_rank=1, tp_size=2))
    attention = layer(shard, 0).self_attn
    mlp = layer(shard, 0).mlp
    q_rows = weights["model.layers.0.self_attn.q_proj.weight"][32:]
    v_rows = weights["model.layers.0.self_attn.v_proj.weight"][32:]
    o_columns = weights["model.layers.0.self_attn.o_proj.weight"][:, 32:]
    up_rows = weights["model.layers.0.mlp.up_proj.weight"][48:]
    down_columns = weights["model.layers.0.mlp.down_proj.weight"][:, 48:]
    assert torch.equal(attention.qkv_weight[:32], q_rows)
    assert torch.equal(attention.qkv_weight[64:], v_rows)
    assert torch.equal(attention.o_weight, o_columns)
    assert torch.equal(mlp.gate_up_weight[48:], up_rows)
    assert torch.equal(mlp.down_weight, down_columns)
    assert torch.equal(shard.lm_head, weights["lm_head.weight"])


def write_checkpoint(
    directory: Path, config: ModelConfig, tensors: dict[str, torch.Tensor]
) -> None:
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "eos_token_id": config.eos_token_id,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "tie_word_embeddings": False,
    }
    (directory / "config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    names = sorted(tensors)
    half = len(names) // 2
    save_file(
        {name: tensors[name] for name in names[:half]},
        directory / "model-00001-of-00002.safetensors",
    )
    save_file(
        {name: tensors[name] for name in names[half:]},
        directory / "model-00002-of-00002.safetensors",
    )


def test_checkpoint_directory_loads(tmp_path: Path) -> None:
    tensors = random_weights(CONFIG, seed=9)
    generator = torch.Generator().manual_seed(1)
    for name, shape in checkpoint_shapes(CONFIG).items():
        if len(shape) == 1:
            tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
    write_checkpoint(tmp_path, CONFIG, tensors)

    config, weights_dir = resolve_model(str(tmp_path))
    assert config == CONFIG
    assert weights_dir == tmp_path

    loaded = build_model(config, weights_dir)
    loaded.allocate_kv_cache(num_blocks=8, block_size=BLOCK_SIZE)
    reference = LlamaShard(CONFIG)
    reference.load(memory_reader(tensors, tp_rank=0, tp_size=1))
    reference.allocate_kv_cache(num_blocks=8, block_size=BLOCK_SIZE)
    step = chunk(PROMPT, 0, (0, 1, 2))
    assert torch.equal(logits_of(loaded, step), logits_of(reference, step))


def test_checkpoint_rank_slice_loads(tmp_path: Path) -> None:
    tensors = random_weights(CONFIG, seed=9)
    write_checkpoint(tmp_path, CONFIG, tensors)
    shard = build_model(CONFIG, tmp_path, tp_rank=1, tp_size=2)
    down_columns = tensors["model.layers.1.mlp.down_proj.weight"][:, 48:]
    k_rows = tensors["model.layers.1.self_attn.k_proj.weight"][32:]
    assert torch.equal(layer(shard, 1).mlp.down_weight, down_columns)
    assert torch.equal(layer(shard, 1).self_attn.qkv_weight[32:64], k_rows)


def test_checkpoint_missing_tensor_rejected(tmp_path: Path) -> None:
    tensors = random_weights(CONFIG, seed=9)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_checkpoint(tmp_path, CONFIG, tensors)
    with pytest.raises(ValueError, match=r"has no tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        build_model(CONFIG, tmp_path)


def test_checkpoint_wrong_shape_rejected(tmp_path: Path) -> None:
    tensors = random_weights(CONFIG, seed=9)
    tensors["model.norm.weight"] = torch.ones(63)
    write_checkpoint(tmp_path, CONFIG, tensors)
    with pytest.raises(
        ValueError, match=r"model\.norm\.weight: expected shape \(64,\) for this rank, got \(63,\)"
    ):
        build_model(CONFIG, tmp_path)


def hf_config(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "vocab_size": 128,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 96,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "eos_token_id": 1,
    }
    base.update(overrides)
    return base


def test_hf_config_reads_llama_keys() -> None:
    assert ModelConfig.from_hf_config(hf_config()) == CONFIG


def test_hf_config_eos_list_keeps_first() -> None:
    assert ModelConfig.from_hf_config(hf_config(eos_token_id=[7, 9])).eos_token_id == 7


def test_hf_config_dtype_read() -> None:
    assert ModelConfig.from_hf_config(hf_config(torch_dtype="bfloat16")).dtype == "bfloat16"


def test_hf_config_grouped_query_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"num_key_value_heads 2 differs from num_attention_heads 4"
    ):
        ModelConfig.from_hf_config(hf_config(num_key_value_heads=2))


def test_hf_config_rope_scaling_rejected() -> None:
    with pytest.raises(ValueError, match=r"rope_scaling .* is not supported"):
        ModelConfig.from_hf_config(hf_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}))


def test_hf_config_missing_key_rejected() -> None:
    config = hf_config()
    del config["intermediate_size"]
    with pytest.raises(ValueError, match=r"missing key 'intermediate_size'"):
        ModelConfig.from_hf_config(config)


def test_config_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match=r"num_heads 3 does not divide hidden_size 64"):
        ModelConfig(
            vocab_size=128,
            hidden_size=64,
            num_layers=1,
            num_heads=3,
            intermediate_size=96,
            max_position_embeddings=256,
        )


def test_tp_size_must_divide_intermediate() -> None:
    with pytest.raises(ValueError, match=r"TP size 4 does not divide intermediate_size 6"):
        ModelConfig(
            vocab_size=128,
            hidden_size=64,
            num_layers=1,
            num_heads=4,
            intermediate_size=6,
            max_position_embeddings=256,
        ).check_tp_size(4)


def test_preset_resolves_without_weights() -> None:
    config, weights_dir = resolve_model("tiny-llama")
    assert config.hidden_size == 256
    assert weights_dir is None


def test_unknown_model_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a preset \(tiny-llama, small-llama\)"):
        resolve_model(str(tmp_path / "absent"))


def test_directory_without_config_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no config\.json"):
        resolve_model(tmp_path)
