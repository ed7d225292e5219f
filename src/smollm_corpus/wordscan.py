"""The recipe's words of many texts at once: one byte array of their normalised words, and the words' hashes.

A batch is scanned in numpy, straight from its Arrow text column's UTF-8 bytes, so that threads
scan in parallel: a lookup table lowercases ASCII and zeroes non-word bytes, and the few
non-ASCII characters are overwritten by their normalised form, computed once per character with
Python's own ``unicodedata`` and ``re`` (a document needing context to normalise, such as a
capital sigma, is normalised by Python instead), so the words are exactly the recipe's:
Unicode NFD, combining marks (Mn) dropped, lowercase, ``\\w+``.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

_WORD = re.compile(r"\w+")


def normalize(text: str) -> list[str]:
    """The recipe's words of ``text``: NFD, combining marks (Mn) dropped, lowercase, ``\\w+``."""
    if not text.isascii():  # ASCII is its own NFD and has no combining marks
        text = unicodedata.normalize("NFD", text)
        marks = [c for c in set(text) if unicodedata.category(c) == "Mn"]
        if marks:
            text = text.translate(dict.fromkeys(map(ord, marks)))
    return _WORD.findall(text.lower())


# lookup table: ASCII word characters lowercased, other ASCII zeroed, the rest kept for _fix
_ASCII = np.array([ord(chr(b).lower()) if _WORD.fullmatch(chr(b)) else 0 for b in range(128)] + list(range(128, 256)),
                  np.uint8)
# the same for two bytes at a time: numpy looks them up twice as fast
_PAIRS = _ASCII[np.arange(1 << 16, dtype=np.uint16).view(np.uint8)].view(np.uint16)
_SKIP = 0xFF  # never in UTF-8: marks bytes removed after the fix-up
# Per code point, filled on first sight: the bytes written over its UTF-8, and whether they are known (1) or
# Python must normalise the document (2). Zeroed memory costs nothing until written.
_CODES = 0x110001  # the last stands for any larger number that bytes which are not UTF-8 decode to
_FIXED = np.zeros((_CODES, 4), np.uint8)
_STATE = np.zeros(_CODES, np.uint8)
_STATE_LOCK = threading.Lock()


def _replacement(cp: int) -> bytes | None:
    """The normalised bytes of code point ``cp``, as long as its UTF-8, or None if Python must normalise it."""
    try:
        char = chr(cp)
        size = len(char.encode())
    except (ValueError, UnicodeEncodeError):  # not a character: the bytes are not UTF-8
        return None
    kept = "".join(c for c in unicodedata.normalize("NFD", char) if unicodedata.category(c) != "Mn")
    if "\u03a3" in kept:  # a capital sigma lowercases according to its neighbours
        return None
    out = b"".join(c.encode() if _WORD.fullmatch(c) else b"\0" for c in kept.lower())
    if len(out) > size:
        return None
    # zero padding only extends a separator; after a word byte (or nothing) the padding must vanish
    return out + bytes([0 if out.endswith(b"\0") else _SKIP]) * (size - len(out))


def strings(texts: Sequence[str]) -> tuple[pa.Array, set[int]]:
    """``texts`` as an Arrow array, and the rows that UTF-8 cannot hold (lone surrogates), empty there."""
    try:
        return pa.array(texts, pa.large_string()), set()
    except UnicodeEncodeError:
        general = set()
        for i, text in enumerate(texts):
            try:
                text.encode()
            except UnicodeEncodeError:
                general.add(i)
        return pa.array(["" if i in general else t for i, t in enumerate(texts)], pa.large_string()), general


def layout(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's UTF-8 bytes, without a copy, and where each value starts in them (and where the last ends)."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.large_string())
    if array.null_count:
        array = array.fill_null("")
    _, offsets, data = array.buffers()
    wide = pa.types.is_large_string(array.type)
    offsets = np.frombuffer(offsets, np.int64 if wide else np.int32)[array.offset : array.offset + len(array) + 1]
    return np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8), offsets.astype(np.int64, copy=False)


def _translate(source: np.ndarray, target: np.ndarray) -> None:
    """``target[:] = _ASCII[source]``, a pair of bytes at a time where both are aligned alike."""
    head = min(source.ctypes.data & 1, len(source))
    pairs = (len(source) - head) // 2 * 2 + head
    target[:head] = _ASCII[source[:head]]
    np.take(_PAIRS, source[head:pairs].view(np.uint16), out=target[head:pairs].view(np.uint16), mode="clip")
    target[pairs:] = _ASCII[source[pairs:]]


class Stream:
    """Documents as one byte array of their normalised words, zero bytes between words, and the words' hashes."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, general: set[int], text: Callable[[int], str]) -> None:
        """Document i is ``data[offsets[i]:offsets[i + 1]]`` in UTF-8, or ``text(i)`` where Python must normalise it
        (i in ``general``, or found here to need it)."""
        source = data[offsets[0] : offsets[-1]]
        base = 2 - (source.ctypes.data & 1)  # at least one zero byte before the words, at the source's alignment
        m = np.zeros(base + len(source) + 8, np.uint8)  # and 8 after them: a word's last 8 bytes are read at once
        _translate(source, m[base:-8])
        starts = offsets - (offsets[0] - base)  # starts[i + 1]: the end of document i
        m, starts = self._fix(m, starts, general)
        if general:
            pieces = [" ".join(normalize(text(i))).encode() if i in general else m[starts[i] : starts[i + 1]].tobytes()
                      for i in range(len(starts) - 1)]
            m = np.zeros(sum(map(len, pieces)) + 9, np.uint8)
            m[1:-8] = _ASCII[np.frombuffer(b"".join(pieces), np.uint8)]  # spaces zeroed; the rest is translated already
            starts = np.concatenate(([1], 1 + np.cumsum([len(p) for p in pieces], dtype=np.int64)))
        word = m != 0
        edges = np.flatnonzero(word[1:] != word[:-1])  # m starts and ends with zero bytes
        edges += 1
        inner = starts[1:-1]
        joined = unique(inner[word[inner - 1] & word[inner]])
        if len(joined):  # documents meet without a separator: a word ends and another begins there
            edges = np.insert(edges, np.searchsorted(edges, joined).repeat(2), joined.repeat(2))
        begin, end = edges[0::2], edges[1::2]
        self.first = np.searchsorted(begin, starts)  # first word of each document; [-1]: the word count
        size = end - begin
        windows = np.ndarray((len(m) - 7,), np.uint64, buffer=m, strides=(1,))  # 8 bytes from each offset
        # first and last 8 bytes and the length: exact for words up to 16 bytes, and hits are checked word by word
        hashes = windows[begin]
        hashes &= _MASKS[np.minimum(size, 8)]
        hashes *= _K1
        hashes ^= size.view(np.uint64)
        long = np.flatnonzero(size > 8)
        hashes[long] ^= windows[end[long] - 8] * _K2
        self.hashes = _mix(hashes)

    @staticmethod
    def _fix(m: np.ndarray, starts: np.ndarray, general: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Overwrite non-ASCII characters with their normalised bytes; add documents needing Python to ``general``."""
        high = np.flatnonzero(m >= 0x80)
        if not len(high):
            return m, starts
        lead = high[(m[high] & 0xC0) != 0x80]
        b = [m[lead + j].astype(np.int64) & 0x3F for j in range(4)]
        first = m[lead].astype(np.int64)
        size = 2 + (first >= 0xE0) + (first >= 0xF0)
        cp = np.where(size == 2, (first & 0x1F) << 6 | b[1],
                      np.where(size == 3, (first & 0x0F) << 12 | b[1] << 6 | b[2],
                               (first & 0x07) << 18 | b[1] << 12 | b[2] << 6 | b[3]))
        np.minimum(cp, _CODES - 1, out=cp)
        state = _STATE[cp]
        if not state.all():
            with _STATE_LOCK:
                for code in np.unique(cp[state == 0]).tolist():
                    out = _replacement(code)
                    _FIXED[code, : len(out or b"")] = list(out or b"")
                    _STATE[code] = 2 if out is None else 1  # after the bytes: another thread may read them at once
            state = _STATE[cp]
        fixed = _FIXED[cp]
        for j in range(4):
            at = size > j
            m[lead[at] + j] = fixed[at, j]
        general.update((np.searchsorted(starts, lead[state == 2], "right") - 1).tolist())
        if (fixed == _SKIP).any():
            kept = m != _SKIP
            starts = starts - np.searchsorted(np.flatnonzero(~kept), starts)
            m = m[kept]
        return m, starts


_K1, _K2, _K3, _K4 = (np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0xFF51AFD7ED558CCD, 0x100000001B3))
_MASKS = np.array([(1 << 8 * i) - 1 for i in range(9)], np.uint64)


def _mix(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(32)
    h *= _K3
    h ^= h >> np.uint64(29)
    return h


def grams(hashes: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """Hashes of the ``length`` words from each position in ``at``."""
    g = hashes[at]
    for j in range(1, length):
        g *= _K4
        g += hashes[at + j]
    return _mix(g)


def unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)``, by sorting: several times faster than numpy's hashing on these arrays."""
    values = np.sort(values)
    distinct = np.ones(len(values), bool)
    distinct[1:] = values[1:] != values[:-1]
    return values[distinct]


def bags(hashes: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """Bitmap slots of the ``length`` words from each position in ``at``, in any order: a prefilter, so one
    cumulative sum can stand in for ``length`` lookups per position."""
    sums = np.concatenate(([np.uint64(0)], np.cumsum(hashes)))
    return _mix(sums[at + length] - sums[at])
