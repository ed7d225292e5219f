"""Decontamination: drop documents that copy a benchmark sample (the Cosmopedia recipe, done better).

A document is normalised as the recipe does (Unicode NFD, combining marks dropped, lowercase,
``\\w+`` words). It is a candidate when it shares a word n-gram with a benchmark sample, and is
dropped when, for such a sample, the matching blocks of ``difflib.SequenceMatcher`` longer than
5 characters cover more than ``threshold`` of the sample's normalised text. The recipe compares
a document only with the sample of the first shared n-gram it meets; here every sample sharing
an n-gram is compared, those sharing the most first, up to :data:`MAX_SAMPLES`, so the
documents dropped are a superset of the recipe's (the same where a document meets one sample).

Finding candidates is the costly part, as almost no document is one. A batch is scanned as
one byte string: ``bytes.translate`` lowercases ASCII and zeroes non-word bytes, and the few
non-ASCII characters are overwritten by their normalised form, computed once per character
with Python's own ``unicodedata`` and ``re`` (a document needing context to normalise, such as
a capital sigma, is normalised by Python instead), so the words are exactly the recipe's. Words
are hashed with numpy, and the hashes of k words at every s-th word are looked up in a bitmap
of the benchmarks' k-grams: with s + k = n + 1, every shared n-gram contains one of them. Only
around those hits are n-grams hashed and looked up, and only documents with a real hit are
normalised by Python, their n-grams compared word by word and their diffs computed.
"""

from __future__ import annotations

import difflib
import json
import functools
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import UsageError
from .evalsets import Benchmarks

#: at most this many benchmark samples are compared with one document, those sharing the most n-grams first
MAX_SAMPLES = 16
_SCAN_CHARS = 1 << 18


@dataclass(frozen=True)
class Contamination:
    """Why a document is dropped: the benchmark sample it copies."""

    task: str  # the sample's task_name ("unknown" when the benchmarks have none)
    sample: int  # the sample's row in the benchmark dataset
    ratio: float  # share of the sample's normalised text found in the document
    ngram: str  # the first n-gram of the document shared with the sample, normalised


_WORD = re.compile(r"\w+")


def normalize(text: str) -> list[str]:
    """The recipe's words of ``text``: NFD, combining marks (Mn) dropped, lowercase, ``\\w+``."""
    if not text.isascii():  # ASCII is its own NFD and has no combining marks
        text = unicodedata.normalize("NFD", text)
        marks = [c for c in set(text) if unicodedata.category(c) == "Mn"]
        if marks:
            text = text.translate(dict.fromkeys(map(ord, marks)))
    return _WORD.findall(text.lower())


# bytes.translate table: ASCII word characters lowercased, other ASCII zeroed, the rest kept for _fix
_ASCII = bytes(ord(chr(b).lower()) if _WORD.fullmatch(chr(b)) else 0 for b in range(128)) + bytes(range(128, 256))
_SKIP = 0xFF  # never in UTF-8: marks bytes removed after the fix-up
#: per non-ASCII code point: the bytes written over its UTF-8 (same length), or None if Python must normalise
_REPLACEMENTS: dict[int, bytes | None] = {}


def _replacement(cp: int) -> bytes | None:
    char = chr(cp)
    kept = "".join(c for c in unicodedata.normalize("NFD", char) if unicodedata.category(c) != "Mn")
    if "\u03a3" in kept:  # a capital sigma lowercases according to its neighbours
        return None
    out = b"".join(c.encode() if _WORD.fullmatch(c) else b"\0" for c in kept.lower())
    size = len(char.encode())
    if len(out) > size:
        return None
    # zero padding only extends a separator; after a word byte (or nothing) the padding must vanish
    return out + bytes([0 if out.endswith(b"\0") else _SKIP]) * (size - len(out))


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: Python normalises it
        return None


class _Stream:
    """A batch as one byte array: each document's normalised words, zero bytes between words and documents."""

    def __init__(self, texts: Sequence[str]) -> None:
        encoded = [_utf8(t) for t in texts]
        general = {i for i, e in enumerate(encoded) if e is None}
        data = b"\0" + b"\0".join(e or b"" for e in encoded) + b"\0" * 9
        m = np.frombuffer(data.translate(_ASCII), np.uint8)
        lengths = np.array([len(e or b"") + 1 for e in encoded], np.int64)
        starts = np.concatenate(([1], 1 + np.cumsum(lengths)))  # starts[i + 1] - 1: end of document i
        m, starts = self._fix(m, starts, general)
        if general:
            pieces = [" ".join(normalize(t)).encode().translate(_ASCII) if i in general
                      else m[starts[i]:starts[i + 1] - 1].tobytes() for i, t in enumerate(texts)]
            m = np.frombuffer(b"\0" + b"\0".join(pieces) + b"\0" * 9, np.uint8)
            starts = np.concatenate(([1], 1 + np.cumsum([len(p) + 1 for p in pieces])))
        word = m != 0
        edges = np.flatnonzero(word[1:] != word[:-1]) + 1  # m starts and ends with zero bytes
        begin, end = edges[0::2], edges[1::2]
        self.first = np.searchsorted(begin, starts)  # first word of each document; [-1]: the word count
        size = end - begin
        windows = np.ndarray((len(m) - 7,), np.uint64, buffer=m, strides=(1,))  # 8 bytes from each offset
        # first and last 8 bytes and the length: exact for words up to 16 bytes, and hits are checked word by word
        hashes = (windows[begin] & _MASKS[np.minimum(size, 8)]) * _K1 ^ size.astype(np.uint64)
        long = np.flatnonzero(size > 8)
        hashes[long] ^= windows[end[long] - 8] * _K2
        self.hashes = _mix(hashes)

    @staticmethod
    def _fix(m: np.ndarray, starts: np.ndarray, general: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Overwrite non-ASCII characters with their normalised bytes; add documents needing Python to ``general``."""
        high = np.flatnonzero(m >= 0x80)
        if not len(high):
            return m, starts
        m = m.copy()
        lead = high[(m[high] & 0xC0) != 0x80]
        b = [m[lead + j].astype(np.int64) & 0x3F for j in range(4)]
        first = m[lead].astype(np.int64)
        size = 2 + (first >= 0xE0) + (first >= 0xF0)
        cp = np.where(size == 2, (first & 0x1F) << 6 | b[1],
                      np.where(size == 3, (first & 0x0F) << 12 | b[1] << 6 | b[2],
                               (first & 0x07) << 18 | b[1] << 12 | b[2] << 6 | b[3]))
        unique, which = np.unique(cp, return_inverse=True)
        table = np.zeros((len(unique), 4), np.uint8)
        python = np.zeros(len(unique), bool)
        for row, code in enumerate(unique.tolist()):
            if code not in _REPLACEMENTS:
                _REPLACEMENTS[code] = _replacement(code)
            out = _REPLACEMENTS[code]
            python[row] = out is None
            table[row, : len(out or b"")] = list(out or b"")
        for j in range(4):
            at = size > j
            m[lead[at] + j] = table[which[at], j]
        general.update((np.searchsorted(starts, lead[python[which]], "right") - 1).tolist())
        skipped = np.flatnonzero(m == _SKIP)
        if len(skipped):
            m = m[m != _SKIP]
            starts = starts - np.searchsorted(skipped, starts)
        return m, starts


_K1, _K2, _K3, _K4 = (np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0xFF51AFD7ED558CCD, 0x100000001B3))
_MASKS = np.array([(1 << 8 * i) - 1 for i in range(9)], np.uint64)


def _mix(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(32)
    h *= _K3
    h ^= h >> np.uint64(29)
    return h


def _grams(hashes: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """Hashes of the ``length`` words from each position in ``at``."""
    g = hashes[at]
    for j in range(1, length):
        g *= _K4
        g += hashes[at + j]
    return _mix(g)


def _bags(hashes: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """Bitmap slots of the ``length`` words from each position in ``at``, in any order: a prefilter, so one
    cumulative sum can stand in for ``length`` lookups per position."""
    sums = np.concatenate(([np.uint64(0)], np.cumsum(hashes)))
    return _mix(sums[at + length] - sums[at])


@functools.lru_cache(maxsize=1024)
def _joined(text: str) -> str:
    """A benchmark sample's normalised words joined by spaces, as the diff compares them."""
    return " ".join(normalize(text))


def _ratio(document: str, sample: str) -> float:
    """The share of ``sample`` found in ``document`` (normalised words joined by spaces), as the recipe measures it.

    The recipe lowercases both once more first: normalised words are already their own lowercase.
    Only blocks of 6 characters or more count, and each of their characters lies in a 6-character
    piece of the sample; so the document is cut down to its stretches made of such pieces, joined
    by a character the sample lacks. The matcher finds those blocks there exactly as in the whole
    document (at each step the same longest match wins; shorter ones only split off shorter ones),
    at a fraction of the cost.
    """
    pieces = {sample[i : i + 6] for i in range(len(sample) - 5)}
    keep = bytearray(len(document) + 1)
    for i in range(len(document) - 5):
        if document[i : i + 6] in pieces:
            keep[i : i + 6] = b"\1\1\1\1\1\1"
    stretches = re.finditer(b"\1+", keep)
    cut = "\0".join(document[m.start() : m.end()] for m in stretches)
    blocks = difflib.SequenceMatcher(None, cut, sample, autojunk=False).get_matching_blocks()
    match = " ".join("".join(cut[i : i + size] for i, _, size in blocks if size > 5).split())
    return len(match) / len(sample) if sample else 0.0


class _Index:
    """The benchmarks' k-grams as a bitmap and their n-grams as sorted hashes with their samples."""

    def __init__(self, benchmarks: Benchmarks, n: int) -> None:
        self.benchmarks, self.n = benchmarks, n
        self.stride = max(1, (n + 2) // 3)
        self.k = n + 1 - self.stride
        stream = _Stream(benchmarks.texts)
        counts = np.diff(stream.first)
        sample = np.repeat(np.arange(len(counts)), counts)
        at = np.arange(len(sample))
        useful = counts[sample] >= n  # samples shorter than an n-gram can never be matched
        end = stream.first[sample + 1]
        kgrams = np.unique(_bags(stream.hashes, at[useful & (at + self.k <= end)], self.k))
        bits = max(16, int(np.ceil(np.log2(max(len(kgrams), 1) * 32))))  # about 3% of lookups pass by chance
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << (bits - 3), np.uint8)
        slots = kgrams >> self.shift
        np.bitwise_or.at(self.bitmap, slots >> np.uint64(3), np.left_shift(1, slots & np.uint64(7)).astype(np.uint8))
        starts = at[useful & (at + n <= end)]
        hashes, samples = _grams(stream.hashes, starts, n), sample[starts]
        order = np.lexsort((samples, hashes))
        hashes, samples = hashes[order], samples[order]
        distinct = np.concatenate(([True], (hashes[1:] != hashes[:-1]) | (samples[1:] != samples[:-1])))
        self.hashes, self.samples = hashes[distinct], samples[distinct]

    def hits(self, stream: _Stream) -> dict[int, list[tuple[int, int]]]:
        """Per document with a benchmark n-gram hash: (position of the n-gram's first word, hash)."""
        n, words = self.n, len(stream.hashes)
        if words < n or not len(self.hashes):
            return {}
        at = np.arange(0, words - self.k + 1, self.stride)
        slots = _bags(stream.hashes, at, self.k) >> self.shift
        passed = (self.bitmap[slots >> np.uint64(3)] >> (slots & np.uint64(7)).astype(np.uint8)) & 1
        at = at[passed.astype(bool)]
        # an n-gram holding the k-gram at p starts in [p - stride + 1, p]
        at = np.unique((at[:, None] - np.arange(self.stride)).ravel())
        at = at[(at >= 0) & (at + n <= words)]
        doc = np.searchsorted(stream.first, at, "right") - 1
        within = at + n <= stream.first[doc + 1]
        at, doc = at[within], doc[within]
        hashes = _grams(stream.hashes, at, n)
        found = self.hashes[np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)] == hashes
        hits: dict[int, list[tuple[int, int]]] = {}
        for a, d, h in zip(at[found].tolist(), doc[found].tolist(), hashes[found].tolist()):
            hits.setdefault(d, []).append((a - int(stream.first[d]), h))
        return hits

    def confirm(self, text: str, hits: list[tuple[int, int]], threshold: float) -> Contamination | None:
        """Compare the document with the samples it shares n-grams with, most shared first, up to MAX_SAMPLES."""
        n, words = self.n, normalize(text)
        at = np.array([a for a, _ in hits])
        hashes = np.array([h for _, h in hits], np.uint64)
        first = np.sort(np.unique(hashes, return_index=True)[1])  # an n-gram met again adds nothing
        at, hashes = at[first], hashes[first]
        lo, hi = np.searchsorted(self.hashes, hashes, "left"), np.searchsorted(self.hashes, hashes, "right")
        hit = np.repeat(np.arange(len(hashes)), hi - lo)  # every (n-gram, sample) pair: its n-gram ...
        sample = self.samples[np.arange(len(hit)) - np.repeat(np.cumsum(hi - lo) - hi, hi - lo)]  # ... and sample
        candidates, shared = np.unique(sample, return_counts=True)
        # ties go to the later sample, the one the recipe's index keeps for an n-gram shared by several
        ranked = candidates[np.lexsort((-candidates, -shared))].tolist()
        document, compared = " ".join(words), 0
        for row in ranked:
            joined = _joined(self.benchmarks.texts[row])
            grams = (" ".join(words[a : a + n]) for a in at[hit[sample == row]].tolist())
            gram = next((g for g in grams if f" {g} " in f" {joined} "), None)  # the words themselves, not a hash
            if gram is None:
                continue
            ratio = _ratio(document, joined)
            if ratio > threshold:
                return Contamination(self.benchmarks.tasks[row], row, ratio, gram)
            compared += 1
            if compared == MAX_SAMPLES:
                break
        return None


class Decontaminator:
    """Finds the documents of a batch that copy a benchmark sample.

    Cheap to pickle (the samples, not the index: each process builds that on first use) and
    safe to call from several threads.
    """

    def __init__(self, benchmarks: Benchmarks, ngram: int = 10, threshold: float = 0.5) -> None:
        """
        Args:
            benchmarks: the samples, from :func:`load_benchmarks`.
            ngram: words in the n-grams a document must share with a sample to be compared with it.
            threshold: a document is dropped when the share of a sample found in it is above this.

        Raises:
            UsageError: ``ngram`` is below 1, or ``threshold`` outside [0, 1).
        """
        if ngram < 1:
            raise UsageError(f"the n-gram length must be at least 1, got {ngram}; the recipe uses 10")
        if not 0 <= threshold < 1:
            raise UsageError(f"the contamination threshold must be in [0, 1), got {threshold}; the recipe uses 0.5")
        self.benchmarks, self.ngram, self.threshold = benchmarks, ngram, threshold
        self._lock = threading.Lock()
        self._built: _Index | None = None

    def identity(self) -> dict:
        """What a rerun must match: the benchmarks' content and the options."""
        return {"benchmarks": self.benchmarks.source, "benchmarks_sha256": self.benchmarks.sha256,
                "ngram": self.ngram, "threshold": self.threshold, "max_samples": MAX_SAMPLES}

    def __call__(self, batch: pa.RecordBatch, rows: pa.Array) -> tuple[pa.RecordBatch, pa.Array, list]:
        """Decontamination as a stage of a chunk's work: the rows whose ``text`` is clean, and the others
        skipped as ``contaminated`` with what they copy (JSON) as detail."""
        found = self.check(["" if t is None else t for t in batch.column("text").to_pylist()])
        if not any(found):
            return batch, rows, []
        positions = rows.to_pylist()
        skipped = [(positions[i], "contaminated", json.dumps({"task": c.task, "sample": c.sample, "ratio": round(c.ratio, 4),
                                                              "ngram": c.ngram}, ensure_ascii=False))
                   for i, c in enumerate(found) if c is not None]
        keep = pa.array([c is None for c in found], pa.bool_())
        return batch.filter(keep), rows.filter(keep), skipped

    def check(self, texts: Sequence[str]) -> list[Contamination | None]:
        """For each text, the benchmark sample it copies, or None if it is clean.

        The first call in a process builds the index of the benchmarks (about a second for
        10 MB of samples).
        """
        index = self._index()
        results: list[Contamination | None] = [None] * len(texts)
        start, size = 0, 0
        for end, text in enumerate(texts, 1):
            size += len(text)
            if size >= _SCAN_CHARS or end == len(texts):  # a scan's arrays stay in the CPU's caches
                for doc, hits in index.hits(_Stream(texts[start:end])).items():
                    results[start + doc] = index.confirm(texts[start + doc], hits, self.threshold)
                start, size = end, 0
        return results

    def _index(self) -> _Index:
        with self._lock:
            if self._built is None:
                self._built = _Index(self.benchmarks, self.ngram)
            return self._built

    def __getstate__(self) -> dict:
        return {"benchmarks": self.benchmarks, "ngram": self.ngram, "threshold": self.threshold}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
