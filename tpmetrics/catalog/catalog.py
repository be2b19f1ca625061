"""The catalog: every family tpmetrics exports, with its bucket bounds resolved.

A `Catalog` is built from the family tables once, with the deprecation
policy applied. It contains the engine-data families (vLLM's and
`tpmetrics:`) that are exported under its configuration, keyed by name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tpmetrics.catalog.buckets import BucketBounds, resolve_buckets
from tpmetrics.catalog.deprecation import (
    COMPAT_VERSION,
    DeprecationState,
    deprecation_state,
    is_shown,
    previous_minor_version,
    removed_in,
    shows_hidden_metrics,
    validate_show_hidden_version,
)
from tpmetrics.catalog.tpmetrics_families import SELF_FAMILIES, TPMETRICS_FAMILIES
from tpmetrics.catalog.types import Family, MetricType
from tpmetrics.catalog.vllm import ENGINE_LABELS, REPLACED_BY, VLLM_FAMILIES

logger = logging.getLogger(__name__)

ENGINE_DATA_FAMILIES: tuple[Family, ...] = VLLM_FAMILIES + TPMETRICS_FAMILIES
"""Every engine-data family in table order, before the deprecation policy."""


class UnknownFamilyError(KeyError):
    """A family name that the catalog does not export.

    `args[0]` and `str()` give the message, which explains why. `name` is the family name.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CatalogConfig:
    """The settings a catalog is built with.

    `max_model_len` is the served model's context length in tokens, which
    caps the `request_tokens` buckets. `custom_buckets` replaces whole bucket
    families, as vLLM's `--custom-histogram-buckets` does.
    `show_hidden_metrics_for_version` is vLLM's
    `--show-hidden-metrics-for-version`.
    """

    max_model_len: int = 16384
    custom_buckets: Mapping[str, tuple[float, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    show_hidden_metrics_for_version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.custom_buckets, Mapping):
            raise TypeError(
                f"custom_buckets must be a mapping of bucket family key to bounds, "
                f"got {type(self.custom_buckets).__name__}"
            )
        resolved = resolve_buckets(self.max_model_len, self.custom_buckets)
        custom = MappingProxyType({key: resolved[key] for key in self.custom_buckets})
        object.__setattr__(self, "custom_buckets", custom)
        validate_show_hidden_version(self.show_hidden_metrics_for_version)


_DEFAULT_CONFIG = CatalogConfig()


class Catalog:
    """The engine-data families exported under one configuration, in table order.

    >>> catalog = Catalog(CatalogConfig(max_model_len=100))
    >>> catalog.bounds("vllm:request_prompt_tokens")
    (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    >>> "vllm:time_per_output_token_seconds" in catalog
    False
    """

    def __init__(self, config: CatalogConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self.buckets: Mapping[str, BucketBounds] = MappingProxyType(
            resolve_buckets(config.max_model_len, config.custom_buckets)
        )
        self.self_families: tuple[Family, ...] = SELF_FAMILIES
        check_families(ENGINE_DATA_FAMILIES + SELF_FAMILIES, self.buckets.keys())
        self._families: dict[str, Family] = {}
        self._withheld: dict[str, Family] = {}
        for family in ENGINE_DATA_FAMILIES:
            if is_shown(family.deprecated_in, config.show_hidden_metrics_for_version):
                self._families[family.name] = family
            else:
                self._withheld[family.name] = family
        self._warn_if_flag_unused()

    def family(self, name: str) -> Family:
        """Return the exported family `name`; raise UnknownFamilyError saying why it is not."""
        family = self._families.get(name)
        if family is None:
            raise UnknownFamilyError(name, self._explain_unknown(name))
        return family

    def bounds(self, name: str) -> BucketBounds:
        """Return the bucket bounds of the histogram family `name`."""
        family = self.family(name)
        if family.bucket_family is None:
            raise ValueError(
                f"family {name!r} is a {family.type.value} and has no bucket bounds; "
                f"only histograms have them"
            )
        return self.buckets[family.bucket_family]

    def __contains__(self, name: object) -> bool:
        return name in self._families

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families.values())

    def __len__(self) -> int:
        return len(self._families)

    def _explain_unknown(self, name: str) -> str:
        withheld = self._withheld.get(name)
        if withheld is not None and withheld.deprecated_in is not None:
            return _explain_withheld(withheld, withheld.deprecated_in)
        if any(family.name == name for family in self.self_families):
            return (
                f"family {name!r} is an aggregator self-metric, not engine data; "
                f"look it up in Catalog.self_families"
            )
        base = name.removesuffix("_total")
        if base != name and self._is_counter(base):
            return (
                f"unknown family {name!r}: counters are declared without the _total "
                f"suffix that the exposition adds; use {base!r}"
            )
        return f"unknown family {name!r}; docs/metrics.md lists every exported family"

    def _is_counter(self, name: str) -> bool:
        family = self._families.get(name)
        return family is not None and family.type is MetricType.COUNTER

    def _warn_if_flag_unused(self) -> None:
        flag = self.config.show_hidden_metrics_for_version
        if flag is None or shows_hidden_metrics(flag):
            return
        logger.warning(
            "--show-hidden-metrics-for-version=%s shows no family: the catalog follows "
            "vLLM %s, which hides only families deprecated in %s",
            flag,
            COMPAT_VERSION,
            previous_minor_version(),
        )


def check_families(families: Iterable[Family], bucket_keys: Iterable[str]) -> None:
    """Raise ValueError unless the family tables are consistent.

    Names must be unique, labels must start with `model_name` (and `engine`
    for engine data), counters must be declared without `_total`, and each
    histogram must name a known bucket family.
    """
    known_keys = frozenset(bucket_keys)
    seen: set[str] = set()
    for family in families:
        if family.name in seen:
            raise ValueError(f"family {family.name} is declared twice; keep one declaration")
        seen.add(family.name)
        _check_family(family, known_keys)


def _check_family(family: Family, known_keys: frozenset[str]) -> None:
    expected_labels = ("model_name",) if family.name.startswith("tpmetrics_") else ENGINE_LABELS
    if family.labelnames[: len(expected_labels)] != expected_labels:
        raise ValueError(
            f"family {family.name}: labels must start with {list(expected_labels)}, "
            f"got {list(family.labelnames)}"
        )
    if family.type is MetricType.COUNTER and family.name.endswith("_total"):
        raise ValueError(
            f"counter {family.name} is declared with the _total suffix; declare it as "
            f"{family.name.removesuffix('_total')} because the exposition adds the suffix"
        )
    if family.bucket_family is not None and family.bucket_family not in known_keys:
        raise ValueError(
            f"histogram {family.name} names unknown bucket family {family.bucket_family!r}; "
            f"use one of: {', '.join(sorted(known_keys))}"
        )


def _explain_withheld(family: Family, deprecated_in: str) -> str:
    replacement = REPLACED_BY.get(family.name)
    use = f"; use {replacement} instead" if replacement else ""
    if deprecation_state(deprecated_in) is DeprecationState.HIDDEN:
        return (
            f"family {family.name!r} is hidden: it was deprecated in vLLM {deprecated_in} "
            f"and the catalog follows vLLM {COMPAT_VERSION}; set "
            f"--show-hidden-metrics-for-version={deprecated_in} to show it{use}"
        )
    return (
        f"family {family.name!r} was removed in vLLM {removed_in(deprecated_in)} "
        f"(deprecated in {deprecated_in}){use}"
    )
