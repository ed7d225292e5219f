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
import re
import unicodedata

import numpy as np

from .errors import UsageError

#: datatrove's MinhashConfig: words per shingle, buckets, hashes per bucket, seed
NGRAMS, BUCKETS, PER_BUCKET, SEED = 5, 14, 8, 1
HASHES = BUCKETS * PER_BUCKET
#: the Mersenne prime the permutations work modulo
PRIME = np.uint64((1 << 61) - 1)
#: a document without a signature: no real signature holds this value (every hash is below PRIME)
UNSIGNED = np.uint64(0xFFFFFFFFFFFFFFFF)
#: distinct pieces remembered (whole, or cut into which words) before the memory starts again
_PIECES_KEPT = 1 << 20
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
#: datatrove's number pattern where the text is ASCII (its other separators and digits are not)
_ASCII_NUMBERS = re.compile(r"[0-9]+(?:[.,][0-9]+)?")
_NUMBERS = re.compile(r"\d+(?:[.,،٫⎖⎗⎘]\d+)?")
#: runs of non-ASCII characters: where the rest of the work is, per character (most text has few)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _punctuation_to_space(match: re.Match) -> str:
    return match.group().translate(_PUNCT_TO_SPACE)


def _without_marks(match: re.Match) -> str:
    return "".join(c for c in match.group() if unicodedata.category(c) != "Mn")
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
        self._xxh64 = xxhash.xxh64_intdigest
        tokenizer = spacy.blank("en").tokenizer
        self._spacy = tokenizer
        orth = spacy.attrs.ORTH
        self._special = {key: [piece[orth] for piece in pieces] for key, pieces in tokenizer.rules.items()}
        self._a, self._b = _permutations()
        self._whole: set[str] = set()  # pieces spaCy keeps whole
        self._split: dict[str, tuple[str, ...]] = {}  # pieces it cuts, and their words

    def simplify(self, text: str) -> str:
        """datatrove's ``simplify_text`` with its default ``TextNormConfig``."""
        text = text.lower()
        if text.isascii():  # most text: the same steps by faster means, exact for ASCII
            text = _ASCII_NUMBERS.sub("0", text).encode("ascii").translate(_ASCII_PUNCT_TO_SPACE).decode("ascii")
            return " ".join(text.split())  # only space, \t and \n are left: split() is regex's \s here
        runs = _NON_ASCII.findall(text)
        if any(unicodedata.category(c) == "Cn" for run in runs for c in run):
            text = self._numbers.sub("0", text)  # characters this Python does not know: regex's own tables
        else:  # re's \d is \p{Nd} for every character both know (checked over all code points)
            text = _NUMBERS.sub("0", text)
        # ASCII bytes never occur inside a UTF-8 sequence: the same table serves, then the rest
        text = _NON_ASCII.sub(_punctuation_to_space, text.encode("utf-8").translate(_ASCII_PUNCT_TO_SPACE).decode("utf-8"))
        # regex's \s and str.isspace() agree on every character left (checked over all code points)
        text = " ".join(text.split())
        if not text.isascii():  # ASCII has nothing to decompose
            text = _NON_ASCII.sub(_without_marks, unicodedata.normalize("NFD", text))
        return text.strip()

    def words(self, text: str) -> list[str]:
        """The words of ``text`` as datatrove's English word tokenizer (spaCy's) gives them."""
        simplified = self.simplify(text)
        if not simplified:
            return []
        if len(self._whole) + len(self._split) > _PIECES_KEPT:  # start again: never in the middle of a text
            self._whole, self._split = set(), {}
        whole, split = self._whole, self._split  # this text's view, whatever another thread starts
        pieces = simplified.split(" ")
        new = set(pieces).difference(whole)  # most pieces were seen before, whole
        if new:
            for piece in new.difference(split):
                words = self._cut(piece)
                if words == (piece,):
                    whole.add(piece)
                else:
                    split[piece] = words
            if not new.isdisjoint(split):
                return [word for piece in pieces for word in split.get(piece, (piece,))]
        # datatrove strips each word and drops empty ones: a no-op here, as no piece holds whitespace
        return pieces

    def _cut(self, piece: str) -> tuple[str, ...]:
        """The words spaCy cuts ``piece`` into (itself alone for most)."""
        if piece in self._special:
            return tuple(self._special[piece])
        if piece.isalpha() or piece == "0":
            return (piece,)
        return tuple(token.text for token in self._spacy(piece))

    def shingle_hashes(self, text: str) -> list[int]:
        """The xxh64 of each run of 5 words, joined by spaces, in order."""
        words = self.words(text)
        if len(words) < NGRAMS:
            return []
        data = " ".join(words).encode("utf-8")
        spaces = np.flatnonzero(np.frombuffer(data, np.uint8) == 32)  # words hold no space: one between each two
        starts = np.concatenate(([0], spaces[: len(words) - NGRAMS] + 1))
        ends = np.concatenate((spaces, [len(data)]))[NGRAMS - 1:]
        view, h = memoryview(data), self._xxh64
        return [h(view[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]

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
        if r.max() >= PRIME:  # rare: one subtraction brings those below the prime
            np.subtract(r, PRIME, out=r, where=r >= PRIME)
        return r


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
