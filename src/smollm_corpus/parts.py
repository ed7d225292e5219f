"""Parts: the output of one chunk, written by a worker and appended to the output in order.

A part is ``NNNNNN.part`` (the chunk's documents joined by the separator), ``NNNNNN.idx``
(for each document its row within the chunk and the offset where it ends, so the appender
can cut a part at a document boundary for ``--max-bytes``) and ``NNNNNN.json`` (counters and
skipped rows). The json is written last, after the others are durable: a part counts as
finished only when its json exists, so a crash never leaves a half part that looks whole.
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputError
from .stats import Stats


@dataclass
class PartInfo:
    """What a finished part holds."""

    stats: Stats
    #: (row within the chunk, reason, detail) for each row not written; detail is the blob id where there is one
    skipped_rows: list[tuple[int, str, str]] = field(default_factory=list)


def paths(folder: Path, chunk: int) -> tuple[Path, Path, Path]:
    stem = folder / f"{chunk:06d}"
    return stem.with_suffix(".part"), stem.with_suffix(".idx"), stem.with_suffix(".json")


class PartWriter:
    """Writes the documents of one chunk to a part, stopping once it holds ``max_bytes``."""

    def __init__(self, folder: Path, chunk: int, separator: bytes, max_bytes: int | None) -> None:
        with _writing(folder):
            self._open(folder, chunk, separator, max_bytes)

    def _open(self, folder: Path, chunk: int, separator: bytes, max_bytes: int | None) -> None:
        self.folder, self.chunk = folder, chunk
        self.separator = separator
        self.max_bytes = max_bytes
        self.stats = Stats()
        self.skipped_rows: list[tuple[int, str, str]] = []
        self.index = array("q")
        data, idx, _ = paths(folder, chunk)
        self._data_tmp, self._idx_tmp = data.with_suffix(".part.tmp"), idx.with_suffix(".idx.tmp")
        self._out = open(self._data_tmp, "wb")

    @property
    def full(self) -> bool:
        return self.max_bytes is not None and self.stats.bytes >= self.max_bytes

    def skip(self, row: int, reason: str, detail: str = "") -> None:
        self.stats.skipped[reason] += 1
        self.skipped_rows.append((row, reason, detail))

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
            self.index.extend((rows[i], offset))
            self.stats.documents += 1
            if self.max_bytes is not None and offset >= self.max_bytes:
                self._flush(pieces, offset)
                return i + 1
        self._flush(pieces, offset)
        return len(documents)

    def _flush(self, pieces: list[bytes], offset: int) -> None:
        with _writing(self.folder):
            self._out.write(b"".join(pieces))
        self.stats.bytes = offset

    def finish(self, rows: int) -> PartInfo:
        """Make the part durable and mark it finished."""
        # Rows past ``rows`` (read but cut by max_bytes) are not part of this part.
        self.skipped_rows = [r for r in self.skipped_rows if r[0] < rows]
        self.stats.skipped = Counter(r[1] for r in self.skipped_rows)
        self.stats.rows = rows
        with _writing(self.folder):
            return self._finish()

    def _finish(self) -> PartInfo:
        data, idx, meta = paths(self.folder, self.chunk)
        _durable_close(self._out)
        os.replace(self._data_tmp, data)
        with open(self._idx_tmp, "wb") as f:
            self.index.tofile(f)
            _durable_close(f)
        os.replace(self._idx_tmp, idx)
        info = PartInfo(self.stats, self.skipped_rows)
        tmp = meta.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump({"stats": self.stats.to_json(), "skipped_rows": self.skipped_rows}, f)
            _durable_close(f)
        os.replace(tmp, meta)
        return info

    def abort(self) -> None:
        self._out.close()
        self._data_tmp.unlink(missing_ok=True)


def read_info(folder: Path, chunk: int) -> PartInfo | None:
    """The finished part of ``chunk``, or None where there is none."""
    meta = paths(folder, chunk)[2]
    try:
        data = json.loads(meta.read_text())
    except FileNotFoundError:
        return None
    return PartInfo(Stats.from_json(data["stats"]), [tuple(r) for r in data["skipped_rows"]])


def read_index(folder: Path, chunk: int) -> array:
    index = array("q")
    with open(paths(folder, chunk)[1], "rb") as f:
        index.frombytes(f.read())
    return index


def cut(folder: Path, chunk: int, info: PartInfo, budget: int) -> tuple[int, PartInfo]:
    """How many bytes of the part fit in ``budget`` (whole documents only), and the counters of that prefix."""
    index = read_index(folder, chunk)
    end, last_row, documents = 0, -1, 0
    for k in range(0, len(index), 2):
        if index[k + 1] > budget:
            break
        last_row, end, documents = index[k], index[k + 1], documents + 1
    rows = last_row + 1
    skipped = [r for r in info.skipped_rows if r[0] < rows]
    stats = Stats(rows, documents, end, Counter(r[1] for r in skipped))
    return end, PartInfo(stats, skipped)


def remove(folder: Path, chunk: int) -> None:
    for p in paths(folder, chunk):
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise OutputError(
            f"writing in {folder} failed: {e.strerror}; free some space (or fix permissions), "
            "then run the same command again to resume"
        ) from None


def _durable_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
