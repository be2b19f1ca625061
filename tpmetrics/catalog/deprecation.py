"""vLLM's deprecation policy for metric families, applied at a compatibility version.

The catalog mirrors vLLM's metric set as of `COMPAT_VERSION`. vLLM's metrics
documentation (section "Deprecation Policy") states the policy: a family
deprecated in X.Y is still exported in X.Y, hidden in X.Y+1 unless the
operator passes `--show-hidden-metrics-for-version=X.Y`, and removed from
X.Y+2 on. vLLM compares that option to the previous minor version by plain
string equality, so "0.11" shows what a 0.12 release hides and "0.11.0"
shows nothing.
"""

from __future__ import annotations

import enum
import re

COMPAT_VERSION = "0.12"
"""The vLLM `major.minor` version whose metric set the catalog exports."""

_VERSION_PATTERN = re.compile(r"([0-9]+)\.([0-9]+)")


class DeprecationState(enum.Enum):
    """The stage of the deprecation policy a family is in at one compatibility version."""

    CURRENT = "current"
    DEPRECATED = "deprecated"
    HIDDEN = "hidden"
    REMOVED = "removed"


def parse_version(text: str, value_name: str = "version") -> tuple[int, int]:
    """Parse a `major.minor` version such as "0.12"; errors call it `value_name`."""
    if not isinstance(text, str):
        raise TypeError(f"{value_name} must be a str such as '0.11', got {type(text).__name__}")
    match = _VERSION_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid {value_name} {text!r}: expected major.minor digits such as '0.11', "
            f"without a patch number"
        )
    return int(match.group(1)), int(match.group(2))


def validate_show_hidden_version(value: str | None) -> None:
    """Raise ValueError unless `value` is None or a `major.minor` version."""
    if value is not None:
        parse_version(value, "--show-hidden-metrics-for-version")


def previous_minor_version(compat_version: str = COMPAT_VERSION) -> str | None:
    """Return the version whose deprecated families `compat_version` hides.

    That is "X.(Y-1)" for "X.Y", and None for "X.0", whose previous release
    is not known from the version alone.
    """
    major, minor = parse_version(compat_version, "compatibility version")
    if minor == 0:
        return None
    return f"{major}.{minor - 1}"


def shows_hidden_metrics(
    show_hidden_metrics_for_version: str | None, compat_version: str = COMPAT_VERSION
) -> bool:
    """Return whether the option value re-enables the families hidden at `compat_version`."""
    validate_show_hidden_version(show_hidden_metrics_for_version)
    if show_hidden_metrics_for_version is None:
        return False
    return show_hidden_metrics_for_version == previous_minor_version(compat_version)


def deprecation_state(
    deprecated_in: str | None, compat_version: str = COMPAT_VERSION
) -> DeprecationState:
    """Return the state at `compat_version` of a family deprecated in `deprecated_in`.

    A family that is not deprecated, or deprecated only in a later version,
    is CURRENT.
    """
    compat = parse_version(compat_version, "compatibility version")
    if deprecated_in is None:
        return DeprecationState.CURRENT
    deprecated = parse_version(deprecated_in, "deprecated_in version")
    if compat < deprecated:
        return DeprecationState.CURRENT
    if compat[0] != deprecated[0]:
        # NOTE: the policy counts minor releases within one major version.
        # A family deprecated under an earlier major version is taken as
        # removed, because the number of releases in between is unknown.
        return DeprecationState.REMOVED
    releases_since = compat[1] - deprecated[1]
    if releases_since == 0:
        return DeprecationState.DEPRECATED
    if releases_since == 1:
        return DeprecationState.HIDDEN
    return DeprecationState.REMOVED


def is_shown(
    deprecated_in: str | None,
    show_hidden_metrics_for_version: str | None = None,
    compat_version: str = COMPAT_VERSION,
) -> bool:
    """Return whether a family deprecated in `deprecated_in` is exported at `compat_version`."""
    state = deprecation_state(deprecated_in, compat_version)
    if state is DeprecationState.HIDDEN:
        return shows_hidden_metrics(show_hidden_metrics_for_version, compat_version)
    validate_show_hidden_version(show_hidden_metrics_for_version)
    return state is not DeprecationState.REMOVED


def removed_in(deprecated_in: str) -> str:
    """Return the version from which a family deprecated in `deprecated_in` is removed."""
    major, minor = parse_version(deprecated_in, "deprecated_in version")
    return f"{major}.{minor + 2}"
