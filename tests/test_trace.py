"""The trace reader on the two Azure LLM inference traces and on malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpmetrics.replay.trace import HEADER, TraceRequest, read_trace

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
CODE_TRACE = TRACES / "AzureLLMInferenceTrace_code.csv"
CONV_TRACE = TRACES / "AzureLLMInferenceTrace_conv.csv"

needs_traces = pytest.mark.skipif(
    not (CODE_TRACE.is_file() and CONV_TRACE.is_file()),
    reason=f"the Azure LLM inference traces are not in {TRACES}",
)


def write_trace(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_bytes(text.encode("ascii"))
    return path


@needs_traces
def test_code_trace_first_rows() -> None:
    requests = read_trace(CODE_TRACE, limit=3)
    assert requests == [
        TraceRequest(0.0, 4808, 10),
        TraceRequest(0.052, 3180, 8),
        TraceRequest(0.0981890, 110, 27),
    ]


@needs_traces
def test_conv_trace_first_rows() -> None:
    requests = read_trace(CONV_TRACE, limit=2)
    assert requests == [TraceRequest(0.0, 374, 44), TraceRequest(4.314579, 396, 109)]


@needs_traces
def test_code_trace_all_rows() -> None:
    requests = read_trace(CODE_TRACE)
    assert len(requests) == 8819
    assert requests[-1] == TraceRequest(3435.948056, 549, 173)


@needs_traces
def test_conv_trace_all_rows() -> None:
    requests = read_trace(CONV_TRACE)
    assert len(requests) == 19366
    assert requests[-1] == TraceRequest(3501.721937, 197, 183)


@needs_traces
def test_trace_arrivals_never_decrease() -> None:
    arrivals = [request.arrival_s for request in read_trace(CONV_TRACE)]
    assert arrivals == sorted(arrivals)


def test_lf_line_ends_and_final_newline(tmp_path: Path) -> None:
    path = write_trace(
        tmp_path, f"{HEADER}\n2023-11-16 18:00:00.5,10,2\n2023-11-16 18:00:01.75,20,3\n"
    )
    assert read_trace(path) == [TraceRequest(0.0, 10, 2), TraceRequest(1.25, 20, 3)]


def test_crlf_without_final_newline(tmp_path: Path) -> None:
    path = write_trace(tmp_path, f"{HEADER}\r\n2023-11-16 18:00:00,10,2\r\n2023-11-16 18:00:02,5,1")
    assert read_trace(path) == [TraceRequest(0.0, 10, 2), TraceRequest(2.0, 5, 1)]


def test_arrival_crosses_midnight(tmp_path: Path) -> None:
    path = write_trace(
        tmp_path, f"{HEADER}\n2023-12-31 23:59:59.9999999,1,1\n2024-01-01 00:00:00.0000001,1,1\n"
    )
    assert read_trace(path)[1].arrival_s == 2e-7


def test_limit_stops_early(tmp_path: Path) -> None:
    rows = "".join(f"2023-11-16 18:00:0{second},1,1\n" for second in range(5))
    path = write_trace(tmp_path, f"{HEADER}\n{rows}not a row\n")
    assert len(read_trace(path, limit=5)) == 5


def test_limit_zero(tmp_path: Path) -> None:
    path = write_trace(tmp_path, f"{HEADER}\n2023-11-16 18:00:00,1,1\n")
    assert read_trace(path, limit=0) == []


def test_negative_limit_rejected(tmp_path: Path) -> None:
    path = write_trace(tmp_path, f"{HEADER}\n2023-11-16 18:00:00,1,1\n")
    with pytest.raises(ValueError, match=r"invalid limit -1: expected a non-negative number"):
        read_trace(path, limit=-1)


def test_header_only(tmp_path: Path) -> None:
    path = write_trace(tmp_path, f"{HEADER}\r\n")
    assert read_trace(path) == []


@pytest.mark.parametrize(
    "text",
    ["", "2023-11-16 18:00:00,1,1\n", "timestamp,ContextTokens,GeneratedTokens\n"],
    ids=["empty", "no-header", "wrong-case"],
)
def test_missing_header(tmp_path: Path, text: str) -> None:
    path = write_trace(tmp_path, text)
    with pytest.raises(ValueError, match=r"trace\.csv:1: invalid trace header .*: expected"):
        read_trace(path)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("2023-11-16 18:00:01,1", r"expected 3 fields \(TIMESTAMP,.*\), got 2"),
        ("2023-11-16 18:00:01,1,1,1", r"expected 3 fields .*, got 4"),
        ("", r"expected 3 fields .*, got 1"),
        ("2023-11-16 18:00:01.12345678,1,1", r"expected a TIMESTAMP of the form"),
        ("2023-11-16T18:00:01,1,1", r"expected a TIMESTAMP of the form"),
        ("2023-11-16 18:00:01.,1,1", r"expected a TIMESTAMP of the form"),
        ("2023-02-30 18:00:01,1,1", r"expected a TIMESTAMP of the form"),
        ("2023-11-16 18:00:01,-5,1", r"expected ContextTokens to be a positive integer"),
        ("2023-11-16 18:00:01,0,1", r"expected ContextTokens to be a positive integer"),
        ("2023-11-16 18:00:01, 5,1", r"expected ContextTokens to be a positive integer"),
        ("2023-11-16 18:00:01,5,1.5", r"expected GeneratedTokens to be a positive integer"),
        ("2023-11-16 17:59:59,5,1", r"expected timestamps that never decrease"),
    ],
)
def test_malformed_row(tmp_path: Path, row: str, expected: str) -> None:
    path = write_trace(tmp_path, f"{HEADER}\r\n2023-11-16 18:00:00,1,1\r\n{row}\r\n")
    with pytest.raises(ValueError, match=r"trace\.csv:3: invalid trace row ") as error:
        read_trace(path)
    assert repr(row) in str(error.value)
    assert error.match(expected)


def test_non_ascii_row(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_bytes(f"{HEADER}\n2023-11-16 18:00:00,1\xe9,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"trace\.csv:2: invalid trace row .*expected ASCII text"):
        read_trace(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "absent.csv")
