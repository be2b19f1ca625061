"""The shape of the reference model: presets and Hugging Face Llama checkpoints."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_MODEL = "tiny-llama"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The hyperparameters of a Llama-style decoder.

    `dtype` is the torch dtype name of weights and KV cache, one of
    `SUPPORTED_DTYPES`. `eos_token_id` is None when the model has no
    end-of-sequence token. `tie_word_embeddings` makes the output projection
    share the embedding matrix, so a checkpoint need not contain
    `lm_head.weight`.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    eos_token_id: int | None = None
    dtype: str = "float32"
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"model config: {name} must be at least 1, got {value}")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"model config: num_heads {self.num_heads} does not divide "
                f"hidden_size {self.hidden_size}; choose sizes with hidden_size = heads * head_dim"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"model config: head_dim {self.head_dim} is odd, but rotary embeddings "
                "need an even head_dim"
            )
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError(
                f"model config: rms_norm_eps and rope_theta must be positive, "
                f"got {self.rms_norm_eps} and {self.rope_theta}"
            )
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(
                f"model config: eos_token_id {self.eos_token_id} is outside "
                f"the vocabulary of {self.vocab_size} tokens"
            )
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"model config: unsupported dtype {self.dtype!r}: use one of {SUPPORTED_DTYPES}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def check_tp_size(self, tp_size: int) -> None:
        """Raise ValueError unless the heads and the MLP split evenly over `tp_size` ranks."""
        if tp_size < 1:
            raise ValueError(f"TP size must be at least 1, got {tp_size}")
        for name, value in (
            ("num_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
        ):
            if value % tp_size != 0:
                raise ValueError(
                    f"TP size {tp_size} does not divide {name} {value} of this model; "
                    f"choose a TP size that divides {value}"
                )

    @classmethod
    def from_hf_config(cls, hf_config: Mapping[str, Any]) -> ModelConfig:
        """Build a config from the dict in a Hugging Face Llama `config.json`.

        Raises ValueError for a missing key or a feature this model lacks:
        grouped-query attention, rope scaling, biases or an activation other
        than SiLU.
        """
        _reject_unsupported(hf_config)
        dtype = hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"
        return cls(
            vocab_size=_require_int(hf_config, "vocab_size"),
            hidden_size=_require_int(hf_config, "hidden_size"),
            num_layers=_require_int(hf_config, "num_hidden_layers"),
            num_heads=_require_int(hf_config, "num_attention_heads"),
            intermediate_size=_require_int(hf_config, "intermediate_size"),
            max_position_embeddings=_require_int(hf_config, "max_position_embeddings"),
            rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(hf_config.get("rope_theta", 10000.0)),
            eos_token_id=_read_eos(hf_config.get("eos_token_id")),
            dtype=str(dtype),
            tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        )


PRESETS: dict[str, ModelConfig] = {
    # About 3.4 M parameters: a decode step of a few sequences takes milliseconds on one CPU core.
    "tiny-llama": ModelConfig(
        vocab_size=4096,
        hidden_size=256,
        num_layers=2,
        num_heads=4,
        intermediate_size=512,
        max_position_embeddings=16384,
        eos_token_id=2,
    ),
    # About 22 M parameters, for runs where compute should outweigh Python overhead.
    "small-llama": ModelConfig(
        vocab_size=8192,
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        intermediate_size=1536,
        max_position_embeddings=16384,
        eos_token_id=2,
    ),
}


def resolve_model(name_or_dir: str | Path) -> tuple[ModelConfig, Path | None]:
    """Return the config and the weights directory of a preset name or a checkpoint directory.

    A preset has no weights directory: its weights are drawn from a seed. A
    checkpoint directory is in the Hugging Face layout, a `config.json` and
    one or more `*.safetensors` files.
    """
    if isinstance(name_or_dir, str) and name_or_dir in PRESETS:
        return PRESETS[name_or_dir], None
    directory = Path(name_or_dir)
    if not directory.is_dir():
        raise ValueError(
            f"model {str(name_or_dir)!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor a checkpoint directory"
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"checkpoint directory {directory} has no config.json")
    if not any(directory.glob("*.safetensors")):
        raise ValueError(f"checkpoint directory {directory} has no *.safetensors files")
    with config_path.open(encoding="utf-8") as config_file:
        hf_config = json.load(config_file)
    return ModelConfig.from_hf_config(hf_config), directory


def _reject_unsupported(hf_config: Mapping[str, Any]) -> None:
    heads = hf_config.get("num_attention_heads")
    kv_heads = hf_config.get("num_key_value_heads", heads)
    if kv_heads != heads:
        raise ValueError(
            f"config.json: num_key_value_heads {kv_heads} differs from "
            f"num_attention_heads {heads}; only checkpoints without grouped-query "
            "attention are supported"
        )
    if hf_config.get("rope_scaling") is not None:
        raise ValueError(
            f"config.json: rope_scaling {hf_config['rope_scaling']!r} is not supported; "
            "use a checkpoint with plain rotary embeddings"
        )
    activation = hf_config.get("hidden_act", "silu")
    if activation != "silu":
        raise ValueError(f"config.json: hidden_act {activation!r} is not supported; only 'silu' is")
    for key in ("attention_bias", "mlp_bias"):
        if hf_config.get(key, False):
            raise ValueError(f"config.json: {key} is true, but this model has no biases")
    head_dim = hf_config.get("head_dim")
    hidden = hf_config.get("hidden_size")
    sizes_known = isinstance(hidden, int) and isinstance(heads, int)
    if head_dim is not None and sizes_known and head_dim * heads != hidden:
        raise ValueError(
            f"config.json: head_dim {head_dim} times {heads} heads is not "
            f"hidden_size {hidden}; only head_dim = hidden_size / heads is supported"
        )


def _require_int(hf_config: Mapping[str, Any], key: str) -> int:
    if key not in hf_config:
        raise ValueError(f"config.json: missing key {key!r}")
    value = hf_config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"config.json: {key} must be an integer, got {value!r}")
    return value


def _read_eos(value: object) -> int | None:
    # NOTE: a config with several end-of-sequence ids (Llama 3) keeps only the
    # first; generation does not stop on the others.
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"config.json: eos_token_id must be an integer or a list, got {value!r}")
    return value
