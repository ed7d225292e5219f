"""Decontamination: drop documents that copy a benchmark sample (the Cosmopedia recipe, done better).

A document is normalised as the recipe does (Unicode NFD, combining marks dropped, lowercase,
``\\w+`` words). It is a candidate when it shares a word n-gram with a benchmark sample, and is
dropped when, for such a sample, the matching blocks of ``difflib.SequenceMatcher`` longer than
5 characters cover more than ``threshold`` of the sample's normalised text. The recipe compares
a document only with the sample of the first shared n-gram it meets; here every sample sharing
an n-gram is compared, those sharing the most first, up to :data:`MAX_SAMPLES`, so the
documents dropped are a superset of the recipe's (the same where a document meets one sample).

Finding candidates is the costly part, as almost no document is one. A batch is scanned in
numpy, straight from its Arrow text column's UTF-8 bytes, so that threads scan in parallel: a
lookup table lowercases ASCII and zeroes non-word bytes, and the few non-ASCII characters are
overwritten by their normalised form, computed once per character with Python's own
``unicodedata`` and ``re`` (a document needing context to normalise, such as a capital sigma,
is normalised by Python instead), so the words are exactly the recipe's. Words are hashed, and
the hashes of k words at every s-th word are looked up in a bitmap of the benchmarks' k-grams:
with s + k = n + 1, every shared n-gram contains one of them. Only around those hits are
n-grams hashed and looked up, and only documents with a real hit become Python strings, are
normalised by Python, their n-grams compared word by word and their diffs computed.
"""

from __future__ import annotations

import difflib
import json
import functools
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import UsageError
from .evalsets import Benchmarks

#: at most this many benchmark samples are compared with one document, those sharing the most n-grams first
MAX_SAMPLES = 16
_SCAN_BYTES = 1 << 18


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


def _strings(texts: Sequence[str]) -> tuple[pa.Array, set[int]]:
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


def _layout(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
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


class _Stream:
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
        joined = _unique(inner[word[inner - 1] & word[inner]])
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


def _grams(hashes: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """Hashes of the ``length`` words from each position in ``at``."""
    g = hashes[at]
    for j in range(1, length):
        g *= _K4
        g += hashes[at + j]
    return _mix(g)


def _unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)``, by sorting: several times faster than numpy's hashing on these arrays."""
    values = np.sort(values)
    distinct = np.ones(len(values), bool)
    distinct[1:] = values[1:] != values[:-1]
    return values[distinct]


def _bags(hashes: np.ndarray, at: np.ndarray, length: int) -> np.ndarray:
    """Bitmap slots of the ``length`` words from each position in ``at``, in any order: a prefilter, so one
    cumulative sum can stand in for ``length`` lookups per position."""
    sums = np.concatenate(([np.uint64(0)], np.cumsum(hashes)))
    return _mix(sums[at + length] - sums[at])


@functools.lru_cache(maxsize=1024)
def _joined(text: str) -> str:
    """A benchmark sample's normalised words joined by spaces, as the diff compares them."""
    return " ".join(normalize(text))


def _pieces(text: str) -> np.ndarray:
    """A hash of each 6 characters in a row of ``text``."""
    chars = np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.uint64)
    return _grams(chars, np.arange(max(len(chars) - 5, 0)), 6)


def _ratio(document: str, sample: str) -> float:
    """The share of ``sample`` found in ``document`` (normalised words joined by spaces), as the recipe measures it.

    The recipe lowercases both once more first: normalised words are already their own lowercase.
    Only blocks of 6 characters or more count, and each of their characters lies in a 6-character
    piece of the sample; so the document is cut down to its stretches made of such pieces, joined
    by a character the sample lacks. The matcher finds those blocks there exactly as in the whole
    document (at each step the same longest match wins; shorter ones only split off shorter ones),
    at a fraction of the cost. Pieces are compared by hash: one shared by chance only keeps more
    of the document, which changes no block.
    """
    at = np.flatnonzero(np.isin(_pieces(document), _pieces(sample)))
    kept = np.zeros(len(document) + 2, bool)  # kept[i + 1]: character i is kept
    for j in range(1, 7):
        kept[at + j] = True
    stretches = np.flatnonzero(kept[1:] != kept[:-1]).reshape(-1, 2).tolist()
    cut = "\0".join(document[start:end] for start, end in stretches)
    blocks = difflib.SequenceMatcher(None, cut, sample, autojunk=False).get_matching_blocks()
    match = " ".join("".join(cut[i : i + size] for i, _, size in blocks if size > 5).split())
    return len(match) / len(sample) if sample else 0.0


class _Index:
    """The benchmarks' k-grams as a bitmap and their n-grams as sorted hashes with their samples."""

    def __init__(self, benchmarks: Benchmarks, n: int) -> None:
        self.benchmarks, self.n = benchmarks, n
        self.stride = max(1, (n + 2) // 3)
        self.k = n + 1 - self.stride
        array, general = _strings(benchmarks.texts)
        stream = _Stream(*_layout(array), general, benchmarks.texts.__getitem__)
        counts = np.diff(stream.first)
        sample = np.repeat(np.arange(len(counts)), counts)
        at = np.arange(len(sample))
        useful = counts[sample] >= n  # samples shorter than an n-gram can never be matched
        end = stream.first[sample + 1]
        kgrams = _unique(_bags(stream.hashes, at[useful & (at + self.k <= end)], self.k))
        bits = max(16, int(np.ceil(np.log2(max(len(kgrams), 1) * 128))))  # under 1% pass by chance
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
        at = _unique((at[:, None] - np.arange(self.stride)).ravel())
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


@functools.lru_cache(maxsize=1)
def _building(benchmarks: Benchmarks, n: int) -> Future[_Index]:
    """The index of ``benchmarks``, being built in a thread: once per process, however many chunks bring them."""
    builder = ThreadPoolExecutor(1, thread_name_prefix="benchmark-index")
    try:
        return builder.submit(_Index, benchmarks, n)
    finally:
        builder.shutdown(wait=False)


class Decontaminator:
    """Finds the documents of a batch that copy a benchmark sample.

    Cheap to pickle (the samples, not the index: each process builds its own once, in the
    background from the moment the first decontaminator is made or unpickled there, so that a
    fetch resolves its source and reads its first rows meanwhile) and safe to call from several
    threads.
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
        self._built = _building(benchmarks, ngram)

    def identity(self) -> dict:
        """What a rerun must match: the benchmarks' content and the options."""
        return {"benchmarks": self.benchmarks.source, "benchmarks_sha256": self.benchmarks.sha256,
                "ngram": self.ngram, "threshold": self.threshold, "max_samples": MAX_SAMPLES}

    def __call__(self, batch: pa.RecordBatch, rows: pa.Array) -> tuple[pa.RecordBatch, pa.Array, list]:
        """Decontamination as a stage of a chunk's work: the rows whose ``text`` is clean, and the others
        skipped as ``contaminated`` with what they copy (JSON) as detail."""
        texts = batch.column("text")
        found = self._check(texts, set(), lambda i: texts[i].as_py() or "")  # Python strings for candidates only
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

        The first call waits for the index of the benchmarks if it is not built yet (about
        0.1 s for 2 MB of samples).
        """
        array, general = _strings(texts)
        return self._check(array, general, texts.__getitem__)

    def _check(self, array: pa.Array, general: set[int], text: Callable[[int], str]) -> list[Contamination | None]:
        """``check`` of a string array; ``general`` and ``text`` as for :class:`_Stream`."""
        index = self._built.result()
        data, offsets = _layout(array)
        results: list[Contamination | None] = [None] * len(array)
        start = 0
        while start < len(array):
            # a scan's arrays stay in the CPU's caches
            end = min(len(array), max(start + 1, int(np.searchsorted(offsets, offsets[start] + _SCAN_BYTES))))
            scan = _Stream(data, offsets[start : end + 1], {i - start for i in general if start <= i < end},
                           lambda i, start=start: text(start + i))
            for doc, hits in index.hits(scan).items():
                results[start + doc] = index.confirm(text(start + doc), hits, self.threshold)
            start = end
        return results

    def __getstate__(self) -> dict:
        return {"benchmarks": self.benchmarks, "ngram": self.ngram, "threshold": self.threshold}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
