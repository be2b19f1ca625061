"""A byte-level tokenizer that needs no vocabulary file.

Each UTF-8 byte `b` of the text becomes token id `b + 3`, so ids 3..258 are
the 256 byte values. Ids 0, 1 and 2 are the special tokens pad, BOS and EOS.
A model whose vocabulary is larger than 259 may emit ids above 258; they decode
to a placeholder such as `<|300|>`, so the output of a randomly initialised
model is still printable.

>>> tokenizer = ByteTokenizer()
>>> tokenizer.encode("hé")
[107, 198, 172]
>>> tokenizer.decode([1, 107, 198, 172, 2])
'hé'
"""

from __future__ import annotations

import codecs

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256  # 259: special tokens plus every byte value
SPECIAL_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID})


class ByteTokenizer:
    """Byte-level tokenizer with an optional vocabulary size.

    `vocab_size` is the number of token ids the model has, 259 when None.
    Above 259, the extra ids are valid model outputs that decode to a
    placeholder. Below 259, `encode` accepts only text whose bytes map to ids
    under `vocab_size` (131 covers ASCII), and raises ValueError otherwise.
    """

    def __init__(self, vocab_size: int | None = None) -> None:
        if vocab_size is None:
            vocab_size = BYTE_VOCAB_SIZE
        if vocab_size <= BYTE_OFFSET:
            raise ValueError(
                f"invalid vocab_size {vocab_size}: expected more than {BYTE_OFFSET} "
                f"(ids 0..{BYTE_OFFSET - 1} are special tokens), or None for {BYTE_VOCAB_SIZE}"
            )
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        """Return the token ids of `text`, without BOS or EOS.

        Raises ValueError when `text` is not valid Unicode (a lone surrogate)
        or contains a byte whose id is not under `vocab_size`.
        """
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"cannot encode {text[error.start : error.end]!r} at index {error.start}: "
                "expected valid Unicode text without lone surrogates"
            ) from None
        ids = [byte + BYTE_OFFSET for byte in data]
        if self.vocab_size < BYTE_VOCAB_SIZE:
            self._check_ids_fit(text, ids)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Return the text of `ids`.

        Special tokens decode to nothing. Byte sequences that are not valid
        UTF-8 decode to U+FFFD, and ids above 258 to `<|id|>`. Raises
        ValueError for an id outside `[0, vocab_size)`.
        """
        decoder = IncrementalDecoder(self.vocab_size)
        text = "".join(decoder.decode(token_id) for token_id in ids)
        return text + decoder.flush()

    def _check_ids_fit(self, text: str, ids: list[int]) -> None:
        for token_id in ids:
            if token_id >= self.vocab_size:
                raise ValueError(
                    f"cannot encode {text!r} with vocab_size {self.vocab_size}: byte "
                    f"{token_id - BYTE_OFFSET:#04x} needs token id {token_id}; "
                    f"use vocab_size {BYTE_VOCAB_SIZE} or more to encode any text"
                )


class IncrementalDecoder:
    """Decoder for a stream of token ids, one id at a time.

    A character of several UTF-8 bytes spans several tokens. `decode` returns
    the text completed by each id, which is empty while a character is still
    incomplete. `flush` returns what remains at the end of the stream.
    """

    def __init__(self, vocab_size: int = BYTE_VOCAB_SIZE) -> None:
        self.vocab_size = vocab_size
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, token_id: int) -> str:
        """Return the text that `token_id` completes."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"invalid token id {token_id}: expected an id in [0, {self.vocab_size})"
            )
        if token_id in SPECIAL_IDS:
            return ""
        if token_id >= BYTE_VOCAB_SIZE:
            return self.flush() + f"<|{token_id}|>"
        return self._utf8.decode(bytes([token_id - BYTE_OFFSET]))

    def flush(self) -> str:
        """Return the text of the bytes still buffered (U+FFFD for an incomplete character)."""
        return self._utf8.decode(b"", final=True)
