"""Decontamination: drop documents that copy a benchmark sample (the Cosmopedia recipe, done better).

A document is normalised as the recipe does (Unicode NFD, combining marks dropped, lowercase,
``\\w+`` words). It is a candidate when it shares a word n-gram with a benchmark sample, and is
dropped when, for such a sample, the matching blocks of ``difflib.SequenceMatcher`` longer than
5 characters cover more than ``threshold`` of the sample's normalised text. The recipe compares
a document only with the sample of the first shared n-gram it meets; here every sample sharing
an n-gram is compared, those sharing the most first, up to :data:`MAX_SAMPLES`, so the
documents dropped are a superset of the recipe's (the same where a document meets one sample).

Finding candidates is the costly part, as almost no document is one. A batch is scanned in
numpy, straight from its Arrow text column's UTF-8 bytes (:mod:`wordscan`), so that threads scan
in parallel, into exactly the recipe's words. Words are hashed, and
the hashes of k words at every s-th word are looked up in a bitmap of the benchmarks' k-grams:
with s + k = n + 1, every shared n-gram contains one of them. Only around those hits are
n-grams hashed and looked up, and only documents with a real hit become Python strings, are
normalised by Python, their n-grams compared word by word and their diffs computed.
"""

from __future__ import annotations

import difflib
import json
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import UsageError
from .evalsets import Benchmarks
from .wordscan import Stream, bags, grams, layout, normalize, strings, unique

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


@functools.lru_cache(maxsize=1024)
def _joined(text: str) -> str:
    """A benchmark sample's normalised words joined by spaces, as the diff compares them."""
    return " ".join(normalize(text))


def _pieces(text: str) -> np.ndarray:
    """A hash of each 6 characters in a row of ``text``."""
    chars = np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.uint64)
    return grams(chars, np.arange(max(len(chars) - 5, 0)), 6)


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
    if sample and sample in document:  # the whole sample is the longest match: no need to diff (a long,
        return 1.0  # repetitive copy, a benchmark sample of 130 KB of one sentence, would take the matcher minutes)
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
        array, general = strings(benchmarks.texts)
        stream = Stream(*layout(array), general, benchmarks.texts.__getitem__)
        counts = np.diff(stream.first)
        sample = np.repeat(np.arange(len(counts)), counts)
        at = np.arange(len(sample))
        useful = counts[sample] >= n  # samples shorter than an n-gram can never be matched
        end = stream.first[sample + 1]
        kgrams = unique(bags(stream.hashes, at[useful & (at + self.k <= end)], self.k))
        bits = max(16, int(np.ceil(np.log2(max(len(kgrams), 1) * 128))))  # under 1% pass by chance
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << (bits - 3), np.uint8)
        slots = kgrams >> self.shift
        np.bitwise_or.at(self.bitmap, slots >> np.uint64(3), np.left_shift(1, slots & np.uint64(7)).astype(np.uint8))
        starts = at[useful & (at + n <= end)]
        hashes, samples = grams(stream.hashes, starts, n), sample[starts]
        order = np.lexsort((samples, hashes))
        hashes, samples = hashes[order], samples[order]
        distinct = np.concatenate(([True], (hashes[1:] != hashes[:-1]) | (samples[1:] != samples[:-1])))
        self.hashes, self.samples = hashes[distinct], samples[distinct]

    def hits(self, stream: Stream) -> dict[int, list[tuple[int, int]]]:
        """Per document with a benchmark n-gram hash: (position of the n-gram's first word, hash)."""
        n, words = self.n, len(stream.hashes)
        if words < n or not len(self.hashes):
            return {}
        at = np.arange(0, words - self.k + 1, self.stride)
        slots = bags(stream.hashes, at, self.k) >> self.shift
        passed = (self.bitmap[slots >> np.uint64(3)] >> (slots & np.uint64(7)).astype(np.uint8)) & 1
        at = at[passed.astype(bool)]
        # an n-gram holding the k-gram at p starts in [p - stride + 1, p]
        at = unique((at[:, None] - np.arange(self.stride)).ravel())
        at = at[(at >= 0) & (at + n <= words)]
        doc = np.searchsorted(stream.first, at, "right") - 1
        within = at + n <= stream.first[doc + 1]
        at, doc = at[within], doc[within]
        hashes = grams(stream.hashes, at, n)
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
        array, general = strings(texts)
        return self._check(array, general, texts.__getitem__)

    def _check(self, array: pa.Array, general: set[int], text: Callable[[int], str]) -> list[Contamination | None]:
        """``check`` of a string array; ``general`` and ``text`` as for :class:`Stream`."""
        index = self._built.result()
        data, offsets = layout(array)
        results: list[Contamination | None] = [None] * len(array)
        start = 0
        while start < len(array):
            # a scan's arrays stay in the CPU's caches
            end = min(len(array), max(start + 1, int(np.searchsorted(offsets, offsets[start] + _SCAN_BYTES))))
            scan = Stream(data, offsets[start : end + 1], {i - start for i in general if start <= i < end},
                           lambda i, start=start: text(start + i))
            for doc, hits in index.hits(scan).items():
                results[start + doc] = index.confirm(text(start + doc), hits, self.threshold)
            start = end
        return results

    def __getstate__(self) -> dict:
        return {"benchmarks": self.benchmarks, "ngram": self.ngram, "threshold": self.threshold}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
