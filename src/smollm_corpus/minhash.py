"""MinHash signatures of documents, exactly as datatrove's ``MinhashDedupSignature`` computes them.

datatrove's default ``MinhashConfig`` (the Cosmopedia recipe): the text is simplified
(lowercase, numbers to ``0``, punctuation to spaces, whitespace collapsed, accents dropped), cut
into words by spaCy's English tokenizer, and every run of 5 words (a shingle) is hashed with
64-bit xxhash; 112 seeded permutations ``(h * a + b) mod (2**61 - 1)`` of those hashes keep their
minimum each. The 112 minima, in 14 buckets of 8, are the signature. A document of fewer than 5
words has none (it is never a duplicate, nor the original of one).

spaCy's tokenizer works on each space-separated piece of the simplified text on its own, and
almost every piece is a plain word it keeps whole: those are recognised here without spaCy, and
spaCy is asked only about the rest (a few in a hundred), once per distinct piece.
"""

from __future__ import annotations

import functools
import unicodedata
from itertools import accumulate, chain

import numpy as np

from .errors import UsageError

#: datatrove's MinhashConfig: words per shingle, buckets, hashes per bucket, seed
NGRAMS, BUCKETS, PER_BUCKET, SEED = 5, 14, 8, 1
HASHES = BUCKETS * PER_BUCKET
#: the Mersenne prime the permutations work modulo
PRIME = np.uint64((1 << 61) - 1)
#: a document without a signature: no real signature holds this value (every hash is below PRIME)
UNSIGNED = np.uint64(0xFFFFFFFFFFFFFFFF)
#: shingles permuted at a time: 112 hashes of 8 bytes each, so about 30 MB
_SLAB = 32768

# datatrove's PUNCTUATION (utils/text.py), each character replaced by one space; control
# characters other than \t and \n too
_PUNCTUATION = (
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
)
_PUNCT_TO_SPACE = str.maketrans(_PUNCTUATION, " " * len(_PUNCTUATION))
_ASCII_PUNCTUATION = "".join(c for c in _PUNCTUATION if c.isascii()).encode("ascii")
_ASCII_PUNCT_TO_SPACE = bytes.maketrans(_ASCII_PUNCTUATION, b" " * len(_ASCII_PUNCTUATION))  # the same, far faster


def _permutations() -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.RandomState(SEED)  # a first, then b, from one stream: as datatrove draws them
    a = gen.randint(1, PRIME, dtype=np.uint64, size=(1, HASHES))
    b = gen.randint(0, PRIME, dtype=np.uint64, size=(1, HASHES))
    return a.reshape(-1, 1), b.reshape(-1, 1)  # one row per permutation


class Signer:
    """Signs documents: ``sign(texts)`` gives one row of 112 uint64 per text (:data:`UNSIGNED` for too few words).

    Building one imports spaCy's English tokenizer (no model is downloaded); a process builds it once.
    """

    def __init__(self) -> None:
        try:
            import regex
            import spacy
            import xxhash
        except ImportError as e:
            raise UsageError(f"--dedup needs {e.name}: pip install 'smollm-corpus[dedup]'") from None
        self._numbers = regex.compile(r"\p{Nd}+([.,،٫⎖⎗⎘]{1}\p{Nd}+)?", regex.VERBOSE | regex.UNICODE)
        self._space = regex.compile(r"\s+")
        self._xxh64 = xxhash.xxh64_intdigest
        tokenizer = spacy.blank("en").tokenizer
        self._spacy = tokenizer
        orth = spacy.attrs.ORTH
        self._special = {key: [piece[orth] for piece in pieces] for key, pieces in tokenizer.rules.items()}
        self._a, self._b = _permutations()
        self._marks: dict | None = None

    def simplify(self, text: str) -> str:
        """datatrove's ``simplify_text`` with its default ``TextNormConfig``."""
        text = self._numbers.sub("0", text.lower())
        if text.isascii():
            text = text.encode("ascii").translate(_ASCII_PUNCT_TO_SPACE).decode("ascii")
        else:
            text = text.translate(_PUNCT_TO_SPACE)
        text = self._space.sub(" ", text.strip())
        if not text.isascii():  # ASCII has nothing to decompose
            text = unicodedata.normalize("NFD", text).translate(self._nonspacing_marks())
        return text.strip()

    def words(self, text: str) -> list[str]:
        """The words of ``text`` as datatrove's English word tokenizer (spaCy's) gives them."""
        words: list[str] = []
        special, slow = self._special, self._pieces
        for piece in self.simplify(text).split(" "):
            if piece.isalpha() or piece == "0":
                if piece in special:
                    words.extend(special[piece])
                else:
                    words.append(piece)
            elif piece:
                words.extend(special[piece] if piece in special else slow(piece))
        # datatrove strips each word and drops empty ones: a no-op here, as no piece holds whitespace
        return words

    def shingle_hashes(self, text: str) -> list[int]:
        """The xxh64 of each run of 5 words, joined by spaces, in order."""
        words = self.words(text)
        if len(words) < NGRAMS:
            return []
        line = " ".join(words)
        lengths = map(len, words) if line.isascii() else (len(w.encode("utf-8")) for w in words)
        ends = list(accumulate(n + 1 for n in lengths))  # where each word ends, its space included
        view, h = memoryview(line.encode("utf-8")), self._xxh64
        return [h(view[s:e - 1]) for s, e in zip(chain((0,), ends), ends[NGRAMS - 1:])]

    def sign(self, texts: list[str]) -> np.ndarray:
        """The signatures of ``texts``: an array of shape (len(texts), 112), uint64."""
        out = np.full((len(texts), HASHES), UNSIGNED, dtype=np.uint64)
        hashes: list[int] = []
        owners: list[int] = []  # the document of each run of hashes
        counts: list[int] = []
        for i, text in enumerate(texts):
            if not text:
                continue
            h = self.shingle_hashes(text)
            if h:
                hashes.extend(h)
                owners.append(i)
                counts.append(len(h))
        if not hashes:
            return out
        h = np.array(hashes, dtype=np.uint64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rows = np.array(owners)
        first = 0
        while first < len(rows):  # whole documents at a time, about _SLAB shingles
            last = max(int(np.searchsorted(starts, starts[first] + _SLAB, side="right")), first + 1)
            lo, hi = int(starts[first]), int(starts[last]) if last < len(starts) else len(h)
            out[rows[first:last]] = np.minimum.reduceat(self._permute(h[lo:hi]), starts[first:last] - lo, axis=1).T
            first = last
        return out

    def _permute(self, h: np.ndarray) -> np.ndarray:
        """``(h * a + b) % (2**61 - 1)`` in wrapping uint64 arithmetic, as datatrove computes it; one row per permutation."""
        with np.errstate(over="ignore"):
            x = self._a * h[None, :]
            x += self._b
        # x mod (2**61 - 1) without a division: 2**61 is 1 modulo the prime
        r = x & PRIME
        x >>= np.uint64(61)
        r += x
        np.subtract(r, PRIME, out=r, where=r >= PRIME)
        return r

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 - one Signer per process
    def _pieces(self, piece: str) -> tuple[str, ...]:
        return tuple(token.text for token in self._spacy(piece))

    def _nonspacing_marks(self) -> dict:
        if self._marks is None:  # built on the first text that needs it (about 0.2 s)
            self._marks = {c: None for c in range(0x110000) if unicodedata.category(chr(c)) == "Mn"}
        return self._marks


@functools.lru_cache(maxsize=1)
def signer() -> Signer:
    """This process's :class:`Signer` (built on first use)."""
    return Signer()


class Signatures:
    """The signatures of one chunk's documents, gathered batch by batch as they are rendered."""

    def __init__(self) -> None:
        self._rows: list[int] = []
        self._signatures: list[np.ndarray] = []

    def add(self, rows: list[int], texts: list[str | None]) -> None:
        """Sign ``texts``, the rendered documents of ``rows`` (rows within the chunk, ascending)."""
        self._rows.extend(rows)
        self._signatures.append(signer().sign([t or "" for t in texts]))

    def of(self, rows) -> np.ndarray:
        """The signatures of ``rows`` (the documents written, a subset of the rows added), in their order."""
        if not len(rows):
            return np.empty((0, HASHES), dtype=np.uint64)
        signed = np.asarray(self._rows, dtype=np.int64)
        return np.concatenate(self._signatures)[np.searchsorted(signed, np.asarray(rows, dtype=np.int64))]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity of two documents' shingles, estimated from their signatures (±0.05 near 0.8)."""
    return float(np.mean(a == b))
