"""Reader for the Azure LLM inference trace format.

A trace is a CSV file with the header `TIMESTAMP,ContextTokens,GeneratedTokens`
and one request per row, for example `2023-11-16 18:17:03.9799600,4808,10`.
Timestamps have the form `YYYY-MM-DD HH:MM:SS` with up to 7 fractional digits
and no time zone. Lines end in CRLF or LF, and the last row may lack a line end.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"

_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?")
_TIMESTAMP_FORMAT = "YYYY-MM-DD HH:MM:SS.fffffff (up to 7 fractional digits)"
_TICKS_PER_SECOND = 10_000_000  # 100 ns, the resolution of 7 fractional digits


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace.

    `arrival_s` is the arrival time in seconds after the first row's arrival.
    """

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def read_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read the first `limit` requests of a trace file, or all of them when `limit` is None.

    Raises ValueError for a missing header or a malformed row, naming the file,
    the line number, the row and the expected format.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"invalid limit {limit}: expected a non-negative number of requests")
    return list(itertools.islice(iter_trace(path), limit))


def iter_trace(path: str | Path) -> Iterator[TraceRequest]:
    """Yield the requests of a trace file in file order, reading it line by line."""
    path = Path(path)
    with path.open("rb") as file:
        lines = (_decode_line(path, number, line) for number, line in enumerate(file, start=1))
        header = next(lines, None)
        if header != HEADER:
            raise ValueError(f"{path}:1: invalid trace header {header!r}: expected {HEADER!r}")
        first_ticks: int | None = None
        previous_ticks: int | None = None
        for line_number, row in enumerate(lines, start=2):
            ticks, prompt_tokens, output_tokens = _parse_row(path, line_number, row)
            if previous_ticks is not None and ticks < previous_ticks:
                _raise_row_error(path, line_number, row, "timestamps that never decrease")
            if first_ticks is None:
                first_ticks = ticks
            previous_ticks = ticks
            arrival_s = (ticks - first_ticks) / _TICKS_PER_SECOND
            yield TraceRequest(arrival_s, prompt_tokens, output_tokens)


def _decode_line(path: Path, line_number: int, line: bytes) -> str:
    """Return the line as text without its CRLF or LF line end."""
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}:{line_number}: invalid trace row {line!r}: expected ASCII text"
        ) from None


def _parse_row(path: Path, line_number: int, row: str) -> tuple[int, int, int]:
    """Return the row's timestamp in 100 ns ticks and its two token counts."""
    fields = row.split(",")
    if len(fields) != 3:
        _raise_row_error(path, line_number, row, f"3 fields ({HEADER}), got {len(fields)}")
    ticks = _parse_timestamp(fields[0])
    if ticks is None:
        _raise_row_error(path, line_number, row, f"a TIMESTAMP of the form {_TIMESTAMP_FORMAT}")
    prompt_tokens = _parse_count(fields[1])
    if prompt_tokens is None:
        _raise_row_error(path, line_number, row, "ContextTokens to be a positive integer")
    output_tokens = _parse_count(fields[2])
    if output_tokens is None:
        _raise_row_error(path, line_number, row, "GeneratedTokens to be a positive integer")
    return ticks, prompt_tokens, output_tokens


def _parse_timestamp(text: str) -> int | None:
    """Return the timestamp in 100 ns ticks since 0001-01-01, or None if it is malformed."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    try:
        whole = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    since_min = whole - datetime.min
    seconds = since_min.days * 86_400 + since_min.seconds
    fraction = (match.group(2) or "").ljust(7, "0")
    return seconds * _TICKS_PER_SECOND + int(fraction)


def _parse_count(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def _raise_row_error(path: Path, line_number: int, row: str, expected: str) -> NoReturn:
    raise ValueError(f"{path}:{line_number}: invalid trace row {row!r}: expected {expected}")
