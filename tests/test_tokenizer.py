"""The built-in byte-level tokenizer: ids, round trips, placeholders and the vocabulary cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpmetrics.head.tokenizer import (
    BOS_ID,
    BYTE_VOCAB_SIZE,
    EOS_ID,
    PAD_ID,
    ByteTokenizer,
    IncrementalDecoder,
)


def test_special_ids() -> None:
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)


def test_encode_ascii() -> None:
    assert ByteTokenizer().encode("Hi!") == [0x48 + 3, 0x69 + 3, 0x21 + 3]


def test_encode_bytes_of_utf8() -> None:
    assert ByteTokenizer().encode("é€") == [0xC3 + 3, 0xA9 + 3, 0xE2 + 3, 0x82 + 3, 0xAC + 3]


def test_encode_empty() -> None:
    assert ByteTokenizer().encode("") == []


def test_byte_ids_span_3_to_258() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("\x00") == [3]
    assert tokenizer.decode([258]) == "\ufffd"


@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trip_multilingual() -> None:
    text = "naïve café, 東京, Ελληνικά, emoji 🙂 and a\ttab\n"
    tokenizer = ByteTokenizer(vocab_size=4096)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_skips_special_tokens() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.decode([BOS_ID, *tokenizer.encode("ok"), EOS_ID, PAD_ID]) == "ok"


def test_decode_placeholder_above_byte_range() -> None:
    tokenizer = ByteTokenizer(vocab_size=4096)
    assert tokenizer.decode([*tokenizer.encode("a"), 259, 4095]) == "a<|259|><|4095|>"


def test_decode_invalid_utf8_is_replaced() -> None:
    assert ByteTokenizer().decode([0xFF + 3, 0x41 + 3]) == "\ufffdA"


def test_decode_placeholder_ends_pending_character() -> None:
    assert ByteTokenizer(vocab_size=300).decode([0xC3 + 3, 299]) == "\ufffd<|299|>"


@pytest.mark.parametrize("token_id", [-1, 259])
def test_decode_out_of_vocab_rejected(token_id: int) -> None:
    with pytest.raises(
        ValueError, match=rf"invalid token id {token_id}: expected an id in \[0, 259\)"
    ):
        ByteTokenizer().decode([token_id])


def test_default_vocab_size() -> None:
    assert ByteTokenizer().vocab_size == BYTE_VOCAB_SIZE


def test_small_vocab_encodes_ascii() -> None:
    tokenizer = ByteTokenizer(vocab_size=131)
    assert tokenizer.encode("~") == [0x7E + 3]


def test_small_vocab_rejects_wider_bytes() -> None:
    tokenizer = ByteTokenizer(vocab_size=131)
    with pytest.raises(ValueError, match=r"byte 0xc3 needs token id 198; use vocab_size 259"):
        tokenizer.encode("é")


@pytest.mark.parametrize("vocab_size", [0, 3])
def test_vocab_size_too_small(vocab_size: int) -> None:
    with pytest.raises(ValueError, match=rf"invalid vocab_size {vocab_size}: expected more than 3"):
        ByteTokenizer(vocab_size=vocab_size)


def test_lone_surrogate_rejected() -> None:
    with pytest.raises(ValueError, match=r"at index 1: expected valid Unicode text"):
        ByteTokenizer().encode("a\ud800")


def test_incremental_decoder_waits_for_whole_character() -> None:
    decoder = IncrementalDecoder()
    pieces = [decoder.decode(token_id) for token_id in ByteTokenizer().encode("€!")]
    assert pieces == ["", "", "€", "!"]


def test_incremental_decoder_flush_incomplete() -> None:
    decoder = IncrementalDecoder()
    decoder.decode(0xE2 + 3)
    assert decoder.flush() == "\ufffd"
