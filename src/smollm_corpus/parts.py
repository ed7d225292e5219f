"""Parts: the output of one chunk, written by a worker and appended to the output in order.

A part is the chunk's documents joined by the separator. A worker process writes it to a
scratch file, ``NNNNNN.part``, which is not made durable (it lives a few seconds, usually only
in the page cache, and a resumed run rebuilds any part it did not append), so the output is the
only file written to disk for real. A worker thread keeps it in memory instead, as Arrow
buffers, which the appender writes straight into the output. What the appender needs besides
the bytes travels back with the worker's answer, a :class:`PartInfo`: the counters, the skipped
rows, and where each document ends.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import writing
from .stats import Stats


@dataclass
class PartInfo:
    """What a finished part holds."""

    stats: Stats
    #: (row within the chunk, reason, detail) for each row not written; detail is the blob id where there is one
    skipped_rows: list[tuple[int, str, str]] = field(default_factory=list)
    #: for each document, its row within the chunk and the offset in the part where it ends
    rows: array = field(default_factory=lambda: array("q"))
    ends: array = field(default_factory=lambda: array("q"))
    #: the part's bytes, in pieces, where it was kept in memory; None where it is in its file
    data: list | None = None
    #: --dedup: each document's MinHash signature (a row of uint64 per document, in ``rows`` order)
    signatures: np.ndarray | None = None

    def cut(self, budget: int) -> tuple[int, "PartInfo"]:
        """How many bytes of the part fit in ``budget`` (whole documents only), and the counters of that prefix."""
        documents = 0
        while documents < len(self.ends) and self.ends[documents] <= budget:
            documents += 1
        end = self.ends[documents - 1] if documents else 0
        rows = self.rows[documents - 1] + 1 if documents else 0
        skipped = [r for r in self.skipped_rows if r[0] < rows]
        return end, PartInfo(Stats(rows, documents, end, Counter(r[1] for r in skipped)), skipped, data=self.data)


def path(folder: Path, chunk: int) -> Path:
    return folder / f"{chunk:06d}.part"


class PartWriter:
    """Writes the documents of one chunk to its part (a file, or memory), stopping once it holds ``max_bytes``."""

    def __init__(self, folder: Path, chunk: int, separator: bytes, max_bytes: int | None, in_memory: bool = False) -> None:
        self.separator = separator
        self.max_bytes = max_bytes
        self.info = PartInfo(Stats(), data=[] if in_memory else None)
        self.folder = folder
        self._out = None
        if not in_memory:
            with writing(folder):
                self._out = open(path(folder, chunk), "wb")

    @property
    def stats(self) -> Stats:
        return self.info.stats

    @property
    def full(self) -> bool:
        return self.max_bytes is not None and self.stats.bytes >= self.max_bytes

    def skip(self, row: int, reason: str, detail: str = "") -> None:
        self.stats.skipped[reason] += 1
        self.info.skipped_rows.append((row, reason, detail))

    def skip_rows(self, skipped: list[tuple[int, str, str]]) -> None:
        """Count rows a stage dropped: (row within the chunk, reason, detail) each."""
        for _, reason, _ in skipped:
            self.stats.skipped[reason] += 1
        self.info.skipped_rows.extend(skipped)

    def write(self, rows: Sequence[int], documents: list[str]) -> int:
        """Write ``documents``, the renderings of ``rows`` (rows within the chunk); empty ones are skipped.

        Returns how many were taken: fewer than given once ``max_bytes`` is reached.
        """
        sep, sep_len = self.separator, len(self.separator)
        pieces: list[bytes] = []
        offset = self.stats.bytes
        for i, doc in enumerate(documents):
            if not doc or doc.isspace():
                self.skip(rows[i], "empty")
                continue
            data = doc.encode("utf-8")
            if offset:
                pieces.append(sep)
                offset += sep_len
            pieces.append(data)
            offset += len(data)
            self.info.rows.append(rows[i])
            self.info.ends.append(offset)
            self.stats.documents += 1
            if self.max_bytes is not None and offset >= self.max_bytes:
                self._flush(pieces, offset)
                return i + 1
        self._flush(pieces, offset)
        return len(documents)

    def write_tokens(self, rows: Sequence[int], documents: list[str], tokenizer, eot: str) -> int:
        """Write the token ids of ``documents`` (see :meth:`write`); the part's bytes are the ids, ``ends`` count bytes.

        ``eot`` says where each document's end-of-text token goes: ``before`` (llm.c) or ``after`` (nanoGPT).
        """
        kept = [i for i, doc in enumerate(documents) if doc and not doc.isspace()]
        for i in sorted(set(range(len(documents))) - set(kept)):
            self.skip(rows[i], "empty")
        if not kept:
            return len(documents)
        tokens, counts = tokenizer.encode_documents([documents[i] for i in kept], eot)
        ends = self.stats.bytes + np.cumsum(counts) * tokens.itemsize
        taken = len(kept)
        if self.max_bytes is not None and ends[-1] >= self.max_bytes:
            taken = int(np.searchsorted(ends, self.max_bytes)) + 1  # up to the document that reaches max_bytes
            tokens = tokens[: int(counts[:taken].sum())]
        self.info.rows.extend(rows[i] for i in kept[:taken])
        self.info.ends.extend(ends[:taken].tolist())
        self.stats.documents += taken
        self._put(tokens.data.cast("B") if tokens.size else b"")
        self.stats.bytes = int(ends[taken - 1])
        return len(documents) if taken == len(kept) else kept[taken - 1] + 1

    def write_column(self, rows: pa.Array, column: pa.Array) -> None:
        """Write a column of strings, one document each, joined in Arrow: no Python object per row.

        ``rows`` are the column's positions in the chunk. Same result as :meth:`write` without
        ``max_bytes``; the hot path of the default template.
        """
        if len(column) == 0:
            return
        empty = _blank(column)
        kept_rows = rows
        if pc.any(empty).as_py():
            self.skip_rows([(row, "empty", "") for row in rows.filter(empty).to_pylist()])
            kept_rows = rows.filter(pc.invert(empty))
            column = column.filter(pc.invert(empty))
        if len(column) == 0:
            return
        sep = self.separator.decode()
        lead = self.separator if self.stats.bytes else b""
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(column)], pa.int32()), column), sep)
        data = joined[0].as_buffer()
        # document i ends after all previous documents, their separators, and its own bytes
        lengths = pc.add(pc.cast(pc.binary_length(column), pa.int64()), len(self.separator))
        ends = pc.add(pc.cumulative_sum(lengths), self.stats.bytes + len(lead) - len(self.separator))
        self.info.rows.extend(kept_rows.cast(pa.int64()).to_pylist())
        self.info.ends.extend(ends.to_pylist())
        self.stats.documents += len(column)
        self._put(lead)
        self._put(data)
        self.stats.bytes += len(lead) + data.size

    def _flush(self, pieces: list[bytes], offset: int) -> None:
        self._put(b"".join(pieces))
        self.stats.bytes = offset

    def _put(self, data) -> None:
        if not len(data):
            return
        if self.info.data is not None:
            self.info.data.append(data)
            return
        with writing(self.folder):
            self._out.write(data)

    def finish(self, rows: int) -> PartInfo:
        """Close the part; ``rows`` is how many rows of the chunk it covers."""
        if self._out is not None:
            with writing(self.folder):
                self._out.close()
        # Rows past ``rows`` (read but cut by max_bytes) are not part of this part.
        self.info.skipped_rows = [r for r in self.info.skipped_rows if r[0] < rows]
        self.stats.skipped = Counter(r[1] for r in self.info.skipped_rows)
        self.stats.rows = rows
        return self.info

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()


def _blank(column: pa.Array) -> pa.Array:
    """True where a string is null, empty or all whitespace."""
    # Only strings that start with whitespace can be all whitespace: scan those alone, not every byte.
    first = pc.utf8_slice_codeunits(column, 0, 1)
    candidates = pc.or_(pc.equal(pc.binary_length(first), 0), pc.utf8_is_space(first)).fill_null(True)
    if not pc.any(candidates).as_py():
        return candidates
    return pc.and_(candidates, pc.or_(pc.equal(pc.binary_length(column), 0), pc.utf8_is_space(column)).fill_null(True))
