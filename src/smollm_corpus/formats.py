"""Output formats: text (txt, jsonl) or token ids (bin, nanogpt), and for tokens, the tokenizer and the validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .parts import PartInfo
from .shards import MAX_SHARD_TOKENS, Layout
from .stats import Stats

TEXT_FORMATS = ("txt", "jsonl")
TOKEN_FORMATS = ("bin", "nanogpt")
FORMATS = TEXT_FORMATS + TOKEN_FORMATS
#: llm.c's shard size, and its validation set (its first shard)
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_VAL_TOKENS = 100_000_000
#: by default validation also stops at the documents of this share of the rows read, so that a sample keeps most for training
DEFAULT_VAL_ROWS_SHARE = 0.01


@dataclass(frozen=True)
class Validation:
    """Validation is the first whole documents of the stream, until they hold ``tokens`` tokens or come from ``rows`` rows."""

    tokens: int
    rows: int | None
    itemsize: int

    def end(self, info: PartInfo, stats: Stats) -> int | None:
        """Where validation ends in the stream, if at a document of the part about to be appended after ``stats``."""
        if self.tokens == 0:
            return 0
        if not len(info.ends):
            return None
        ends = stats.bytes + np.frombuffer(info.ends, np.int64)
        done = ends >= self.tokens * self.itemsize
        if self.rows is not None:
            done |= stats.rows + np.frombuffer(info.rows, np.int64) + 1 >= self.rows
        return int(ends[int(np.argmax(done))]) if done.any() else None


@dataclass(frozen=True)
class TokenOutput:
    """What a token format needs besides the documents."""

    format: str
    tokenizer: object  # tokenizer.Tokenizer
    val_tokens: int | None  # as asked; None for the default rule
    shard_tokens: int | None  # bin only
    max_tokens: int | None

    @property
    def itemsize(self) -> int:
        return self.tokenizer.dtype.itemsize

    @property
    def eot(self) -> str:
        """Where each document's end-of-text token goes: llm.c puts it before, nanoGPT's prepare.py after."""
        return "before" if self.format == "bin" else "after"

    @property
    def identity(self) -> dict:
        return {**self.tokenizer.identity, "val_tokens": self.val_tokens, "shard_tokens": self.shard_tokens,
                "max_tokens": self.max_tokens}

    def layout(self, prefix: str) -> Layout:
        return Layout(self.format, prefix, self.itemsize, self.shard_tokens)

    def validation(self, rows_to_read: int | None) -> Validation:
        if self.val_tokens is not None:
            return Validation(self.val_tokens, None, self.itemsize)
        rows = math.ceil(rows_to_read * DEFAULT_VAL_ROWS_SHARE) if rows_to_read else None
        return Validation(DEFAULT_VAL_TOKENS, rows, self.itemsize)

    @property
    def meta(self) -> dict:
        """nanoGPT's meta.pkl: train.py sizes its model from ``vocab_size``."""
        tok = self.tokenizer
        return {"vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "tokenizer": tok.name, "dtype": tok.dtype.name}


def token_output(format: str, tokenizer: str | None, eot: str | None, val_tokens: int | None,
                 shard_tokens: int | None, max_tokens: int | None) -> TokenOutput | None:
    """The token output ``format`` asks for (None for text formats), its tokenizer loaded.

    Raises:
        UsageError: token options with a text format, bad counts, or a tokenizer that does not suit the format.
        SourceError: the tokenizer cannot be fetched.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    asked = {"--tokenizer": tokenizer, "--eot": eot, "--val-tokens": val_tokens, "--shard-tokens": shard_tokens,
             "--max-tokens": max_tokens}
    if format in TEXT_FORMATS:
        given = [name for name, value in asked.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply to token formats only; add --format bin or --format nanogpt")
        return None
    if val_tokens is not None and val_tokens < 0:
        raise UsageError("--val-tokens must be 0 or more")
    if max_tokens is not None and max_tokens <= 0:
        raise UsageError("--max-tokens must be more than 0")
    if format == "nanogpt" and shard_tokens is not None:
        raise UsageError("--shard-tokens applies to --format bin; nanogpt writes one train.bin and one val.bin")
    if format == "bin":
        shard_tokens = DEFAULT_SHARD_TOKENS if shard_tokens is None else shard_tokens
        if not 1 <= shard_tokens <= MAX_SHARD_TOKENS:
            raise UsageError(f"--shard-tokens must be 1 to {MAX_SHARD_TOKENS:,} (a shard's header counts in int32)")
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer, eot)
    if format == "nanogpt" and tok.dtype != np.uint16:
        raise UsageError(
            f"{tok.name} has {tok.vocab_size:,} ids, more than the uint16 that nanoGPT's train.bin holds; "
            "use --format bin (uint32 shards), or a tokenizer of at most 65,536 ids"
        )
    return TokenOutput(format, tok, val_tokens, shard_tokens, max_tokens)
