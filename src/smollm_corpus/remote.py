"""Parts of a parquet file on the Hub, read with HTTP range requests: its footer, and the row groups of one chunk.

Workers of a Dask cluster read their chunks this way: each row group is downloaded by the one
task that needs it, so a file is downloaded once across the cluster (plus its footer, a few KB,
once per chunk), however many machines share it, and nothing is written to the workers' disks.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass

import pyarrow.parquet as pq

from .errors import SourceError



@dataclass(frozen=True)
class Footer:
    size: int  # of the whole file
    metadata: pq.FileMetaData
    tail: tuple[int, bytes]  # (offset, bytes): the end of the file, footer included


class Pieces(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only some ranges were fetched: enough for pyarrow to
    read the footer and the row groups whose bytes are there. Reading anywhere else is an error,
    except before the footer in a read that runs to the end of the file (see :meth:`read`)."""

    def __init__(self, size: int, pieces: list[tuple[int, bytes]]) -> None:
        super().__init__()
        self.size, self.pieces, self.position = size, sorted(pieces, key=lambda p: p[0]), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.position + n, self.size)
        out = bytearray()
        while self.position < end:
            piece = next(((start, data) for start, data in self.pieces if start <= self.position < start + len(data)), None)
            if piece is None:
                following = min((start for start, _ in self.pieces if start > self.position), default=self.size)
                if end != self.size:
                    raise OSError(f"byte {self.position} of the file was not fetched")
                # pyarrow reads the last 64 KB at once in the hope of finding the whole footer there:
                # what precedes the footer is not used, so it need not have been downloaded
                out += bytes(following - self.position)
                self.position = following
                continue
            start, data = piece
            taken = data[self.position - start : end - start]
            out += taken
            self.position += len(taken)
        return bytes(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@functools.lru_cache(maxsize=16)
def footer(location: str) -> Footer:
    """The footer of the parquet file at ``location`` (an hf:// URL, pinned to a commit): its length, then
    exactly its bytes.

    Two small requests rather than one guess of the footer's size, so that no byte of the row
    groups before it is downloaded twice; kept for the next chunks of the same files that this
    process reads (a file of the Hub has hundreds of chunks, spread over the workers).
    """
    with _open(location) as f:
        size = f.size
        f.seek(size - 8)
        end = f.read(8)
        if len(end) < 8 or end[-4:] != b"PAR1":
            raise SourceError(f"{location} does not end like a parquet file: the file on the Hub is damaged, or not "
                              "parquet; check --source and --revision")
        start = size - 8 - struct.unpack("<I", end[:4])[0]
        f.seek(start)
        tail = f.read(size - 8 - start) + end
    metadata = pq.read_metadata(Pieces(size, [(start, tail)]))
    return Footer(size, metadata, (start, tail))


def row_groups(location: str, found: Footer, groups: list[int]) -> pq.ParquetFile:
    """The parquet file at ``location`` with the bytes of row groups ``groups`` (consecutive) fetched: one range request."""
    first, last = found.metadata.row_group(groups[0]), found.metadata.row_group(groups[-1])
    start = min(_column_start(first.column(c)) for c in range(first.num_columns))
    end = max(_column_start(col) + col.total_compressed_size
              for col in (last.column(c) for c in range(last.num_columns)))
    with _open(location) as f:
        f.seek(start)
        data = f.read(end - start)
    return pq.ParquetFile(Pieces(found.size, [found.tail, (start, data)]), metadata=found.metadata)


def _column_start(column: pq.ColumnChunkMetaData) -> int:
    if column.has_dictionary_page and column.dictionary_page_offset:
        return min(column.dictionary_page_offset, column.data_page_offset)
    return column.data_page_offset


def _open(location: str):
    from huggingface_hub import HfFileSystem

    # no cache: each read is one range request of exactly the bytes asked for
    return HfFileSystem().open(location, "rb", cache_type="none")
