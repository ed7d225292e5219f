"""The plan: a subset's rows cut into chunks, in dataset order, from where the output stops."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq

from .downloads import Downloads
from .source import Source, read_metadata
from .worker import HYDRATE_ROWS, Chunk

#: data per chunk of a text subset (uncompressed, whole row groups): small enough that appends
#: keep pace with the workers and the last chunk leaves little to wait for
CHUNK_BYTES = 32 << 20
#: the same where parts are kept in memory until appended: two per worker wait at most
MEMORY_CHUNK_BYTES = 8 << 20


def chunks(
    src: Source, position: dict, limit: int | None, hydrated: bool, downloads: Downloads, ahead: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Chunk]:
    """Chunks from ``position`` (file and row) on; files are brought to disk ``ahead`` at a time.

    ``limit`` counts the rows still wanted: a file is opened only once the rows before it are
    known to be too few, so a limited run reads and downloads no file it does not need.
    """
    files = src.files[position["file"]:]
    index = 0
    for n, file in enumerate(files):
        if limit == 0:
            return
        if limit is None:
            downloads.start(files[n : n + ahead])
        path = downloads.get(file)
        meta = read_metadata(file, path)
        start = position["row"] if n == 0 else 0
        end = meta.num_rows if limit is None else min(meta.num_rows, start + limit)
        for a, b in _ranges(meta, start, end, hydrated, chunk_bytes):
            yield Chunk(index, file, str(path), a, b, meta.num_rows)
            index += 1
        if start == end:
            downloads.release(file)
        if limit is not None:
            limit -= end - start


def _ranges(meta: pq.FileMetaData, start: int, end: int, hydrated: bool, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """Row ranges of about ``chunk_bytes`` (whole row groups), or of HYDRATE_ROWS rows where contents come from S3."""
    if hydrated:
        yield from ((a, min(a + HYDRATE_ROWS, end)) for a in range(start, end, HYDRATE_ROWS))
        return
    first, offset, size = start, 0, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        offset += group.num_rows
        if offset <= start:
            continue
        size += group.total_byte_size
        if offset >= end:
            break
        if size >= chunk_bytes:
            yield first, offset
            first, size = offset, 0
    if first < end:
        yield first, end
