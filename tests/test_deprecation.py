"""vLLM's deprecation policy: deprecated, hidden unless re-enabled, then removed."""

from __future__ import annotations

import pytest

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


def test_compat_version_is_0_12() -> None:
    assert COMPAT_VERSION == "0.12"


@pytest.mark.parametrize(
    ("compat_version", "state"),
    [
        ("0.10", DeprecationState.CURRENT),
        ("0.11", DeprecationState.DEPRECATED),
        ("0.12", DeprecationState.HIDDEN),
        ("0.13", DeprecationState.REMOVED),
        ("0.20", DeprecationState.REMOVED),
    ],
)
def test_state_follows_compat_version(compat_version: str, state: DeprecationState) -> None:
    assert deprecation_state("0.11", compat_version) is state


def test_state_of_undeprecated_family_is_current() -> None:
    assert deprecation_state(None) is DeprecationState.CURRENT


def test_state_uses_compat_version_by_default() -> None:
    assert deprecation_state("0.11") is DeprecationState.HIDDEN


def test_state_across_major_version_is_removed() -> None:
    assert deprecation_state("0.12", "1.0") is DeprecationState.REMOVED


def test_deprecated_family_is_shown_in_its_version() -> None:
    assert is_shown("0.11", None, "0.11")


def test_hidden_family_is_not_shown_by_default() -> None:
    assert not is_shown("0.11", None, "0.12")


def test_hidden_family_is_shown_with_flag() -> None:
    assert is_shown("0.11", "0.11", "0.12")


@pytest.mark.parametrize("flag", ["0.10", "0.12", "1.11", "0.011"])
def test_hidden_family_needs_exact_flag(flag: str) -> None:
    assert not is_shown("0.11", flag, "0.12")


def test_removed_family_ignores_flag() -> None:
    assert not is_shown("0.11", "0.11", "0.13")


def test_removed_family_ignores_previous_minor_flag() -> None:
    assert not is_shown("0.11", "0.12", "0.13")


def test_current_family_is_shown() -> None:
    assert is_shown(None)


def test_flag_validated_for_current_family() -> None:
    with pytest.raises(ValueError, match=r"invalid --show-hidden-metrics-for-version '0.11.0'"):
        is_shown(None, "0.11.0")


@pytest.mark.parametrize("flag", ["0.11.0", "v0.11", "0.x", "", " 0.11", "0.11 ", "11"])
def test_flag_format_rejected(flag: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid --show-hidden-metrics-for-version '{flag}'"):
        validate_show_hidden_version(flag)


def test_flag_type_rejected() -> None:
    with pytest.raises(TypeError, match=r"must be a str such as '0.11', got float"):
        validate_show_hidden_version(0.11)  # type: ignore[arg-type]


def test_flag_none_accepted() -> None:
    validate_show_hidden_version(None)


def test_shows_hidden_metrics_compares_previous_minor() -> None:
    assert shows_hidden_metrics("0.11", "0.12")


def test_shows_hidden_metrics_false_without_flag() -> None:
    assert not shows_hidden_metrics(None, "0.12")


def test_previous_minor_version() -> None:
    assert previous_minor_version("0.12") == "0.11"


def test_previous_minor_version_of_major_release_is_none() -> None:
    assert previous_minor_version("1.0") is None


def test_parse_version() -> None:
    assert parse_version("0.12") == (0, 12)


def test_parse_version_names_what() -> None:
    with pytest.raises(ValueError, match=r"invalid compatibility version '0.12.1'"):
        parse_version("0.12.1", "compatibility version")


def test_compat_version_validated() -> None:
    with pytest.raises(ValueError, match=r"invalid compatibility version 'latest'"):
        deprecation_state("0.11", "latest")


def test_removed_in_is_two_minors_later() -> None:
    assert removed_in("0.9") == "0.11"
