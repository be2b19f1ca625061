"""The metric catalog: every family tpmetrics exports, its buckets and the deprecation policy.

The reference page renderer lives in `tpmetrics.catalog.reference` and is not
imported here, so that `python -m tpmetrics.catalog.reference` runs it cleanly.
"""

from tpmetrics.catalog.buckets import (
    BUCKET_FAMILY_KEYS,
    BucketBounds,
    build_1_2_5_buckets,
    default_buckets,
    parse_custom_buckets,
    resolve_buckets,
    validate_bounds,
)
from tpmetrics.catalog.catalog import (
    ENGINE_DATA_FAMILIES,
    Catalog,
    CatalogConfig,
    UnknownFamilyError,
    check_families,
)
from tpmetrics.catalog.deprecation import (
    COMPAT_VERSION,
    DeprecationState,
    deprecation_state,
    is_shown,
    parse_version,
    previous_minor_version,
    removed_in,
    shows_hidden_metrics,
    validate_show_hidden_version,
)
from tpmetrics.catalog.tpmetrics_families import SELF_FAMILIES, TPMETRICS_FAMILIES
from tpmetrics.catalog.types import Family, MetricType, Reducer, Scope
from tpmetrics.catalog.vllm import CACHE_CONFIG_LABELS, REPLACED_BY, VLLM_FAMILIES

__all__ = [
    "BUCKET_FAMILY_KEYS",
    "CACHE_CONFIG_LABELS",
    "COMPAT_VERSION",
    "ENGINE_DATA_FAMILIES",
    "REPLACED_BY",
    "SELF_FAMILIES",
    "TPMETRICS_FAMILIES",
    "VLLM_FAMILIES",
    "BucketBounds",
    "Catalog",
    "CatalogConfig",
    "DeprecationState",
    "Family",
    "MetricType",
    "Reducer",
    "Scope",
    "UnknownFamilyError",
    "build_1_2_5_buckets",
    "check_families",
    "default_buckets",
    "deprecation_state",
    "is_shown",
    "parse_custom_buckets",
    "parse_version",
    "previous_minor_version",
    "removed_in",
    "resolve_buckets",
    "shows_hidden_metrics",
    "validate_bounds",
    "validate_show_hidden_version",
]
