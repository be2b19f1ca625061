"""The `tpmetrics` command line: bad settings fail before anything starts."""

from __future__ import annotations

import pytest

from tpmetrics.cli import main


def test_unknown_bucket_family_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--custom-histogram-buckets", '{"no_such_family": [1, 2]}'])
    error = capsys.readouterr().err

    assert code == 2
    assert "no_such_family" in error


def test_decreasing_buckets_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--custom-histogram-buckets", '{"time_to_first_token": [1, 0.5]}'])
    error = capsys.readouterr().err

    assert code == 2
    assert "time_to_first_token" in error


def test_malformed_hidden_version_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--show-hidden-metrics-for-version", "0.11.0"])
    error = capsys.readouterr().err

    assert code == 2
    assert "0.11.0" in error


def test_kv_cache_smaller_than_context_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--num-kv-blocks", "16", "--max-model-len", "8192"])
    error = capsys.readouterr().err

    assert code == 2
    assert "--num-kv-blocks" in error


def test_help_lists_serve_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    text = capsys.readouterr().out

    assert exit_info.value.code == 0
    for flag in ("--tensor-parallel-size", "--data-parallel-size", "--flush-interval", "--address"):
        assert flag in text
