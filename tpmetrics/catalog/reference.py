"""The metric reference page, rendered from the family tables as Markdown.

`python -m tpmetrics.catalog.reference` prints it. docs/metrics.md contains
the output verbatim after its introduction.
"""

from __future__ import annotations

from collections.abc import Iterable

from tpmetrics.catalog.buckets import BUCKET_FAMILY_KEYS, REQUEST_TOKENS, default_buckets
from tpmetrics.catalog.catalog import CatalogConfig
from tpmetrics.catalog.deprecation import (
    COMPAT_VERSION,
    DeprecationState,
    deprecation_state,
    removed_in,
)
from tpmetrics.catalog.tpmetrics_families import SELF_FAMILIES, TPMETRICS_FAMILIES
from tpmetrics.catalog.types import Family, MetricType
from tpmetrics.catalog.vllm import VLLM_FAMILIES

_COLUMNS = ("Name", "Type", "Labels", "Buckets", "Scope", "Merge rule", "Meaning")


def scraped_name(family: Family) -> str:
    """Return the name a scrape shows: counters get `_total`, other families keep theirs."""
    if family.type is MetricType.COUNTER:
        return f"{family.name}_total"
    return family.name


def merge_rule(family: Family) -> str:
    """Return how the aggregator merges the family's series from several sources."""
    if family.derived:
        return "computed by the aggregator"
    if family.reducer is not None:
        return family.reducer.value
    if family.type is MetricType.HISTOGRAM:
        return "sum per bucket"
    return "sum"


def render_reference() -> str:
    """Render every family table and the bucket families as one Markdown text."""
    current = [family for family in VLLM_FAMILIES if family.deprecated_in is None]
    deprecated = [family for family in VLLM_FAMILIES if family.deprecated_in is not None]
    sections = [
        _section("vLLM families", _family_table(current)),
        _section("tpmetrics families", _family_table(TPMETRICS_FAMILIES)),
        _section("Aggregator self-metrics", _family_table(SELF_FAMILIES, self_metrics=True)),
        _section(
            f"Deprecated vLLM families (state at vLLM {COMPAT_VERSION})",
            _family_table(deprecated, with_state=True),
        ),
        _section("Bucket families", _bucket_table()),
    ]
    return "\n".join(sections)


def main() -> None:
    print(render_reference(), end="")


def _section(title: str, table: str) -> str:
    return f"## {title}\n\n{table}"


def _family_table(
    families: Iterable[Family], with_state: bool = False, self_metrics: bool = False
) -> str:
    columns = (*_COLUMNS, "State") if with_state else _COLUMNS
    rows = [_family_row(family, with_state, self_metrics) for family in families]
    return _table(columns, rows)


def _family_row(family: Family, with_state: bool, self_metrics: bool) -> tuple[str, ...]:
    # Self-metrics come from the aggregator itself, so no engine scope applies.
    scope = "aggregator" if self_metrics else family.scope.value
    row = (
        f"`{scraped_name(family)}`",
        family.type.value,
        ", ".join(f"`{label}`" for label in family.labelnames),
        f"`{family.bucket_family}`" if family.bucket_family else "-",
        scope,
        merge_rule(family),
        family.documentation,
    )
    if with_state:
        return (*row, _state_text(family.deprecated_in))
    return row


def _state_text(deprecated_in: str | None) -> str:
    state = deprecation_state(deprecated_in)
    if state is DeprecationState.HIDDEN:
        return (
            f"deprecated in {deprecated_in}, hidden in {COMPAT_VERSION}; exported with "
            f"`--show-hidden-metrics-for-version={deprecated_in}`"
        )
    if state is DeprecationState.REMOVED and deprecated_in is not None:
        return f"deprecated in {deprecated_in}, removed in {removed_in(deprecated_in)}"
    if state is DeprecationState.DEPRECATED:
        return f"deprecated in {deprecated_in}, still exported"
    return "exported"


def _bucket_table() -> str:
    max_model_len = CatalogConfig().max_model_len
    defaults = default_buckets(max_model_len)
    rows = []
    for key in BUCKET_FAMILY_KEYS:
        bounds = ", ".join(_format_bound(bound) for bound in defaults[key])
        if key == REQUEST_TOKENS:
            bounds = (
                f"1, 2, 5, 10, 20, 50, ... up to `max_model_len`; "
                f"for the default {max_model_len}: {bounds}"
            )
        rows.append((f"`{key}`", bounds))
    return _table(("Key", "Default bounds"), rows)


def _format_bound(bound: float) -> str:
    if bound.is_integer():
        return str(int(bound))
    return repr(bound)


def _table(columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    lines = [_table_line(columns), _table_line(tuple("---" for _ in columns))]
    lines.extend(_table_line(row) for row in rows)
    return "\n".join(lines) + "\n"


def _table_line(cells: tuple[str, ...]) -> str:
    escaped = (cell.replace("|", "\\|") for cell in cells)
    return "| " + " | ".join(escaped) + " |"


if __name__ == "__main__":
    main()
