"""Reading rows of a parquet file on the (fake) Hub by range requests: the same rows, only the bytes they need."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fakehub import FakeHub, fake_hub_env
from smollm_corpus import remote, source
from smollm_corpus.errors import SourceError

FILE = "fineweb-edu-dedup/train-00001-of-00004.parquet"


@pytest.fixture
def hub(mirror: Path):
    with FakeHub(mirror) as hub:
        yield hub


def sent(hub: FakeHub) -> list[tuple[int, int]]:
    """The byte ranges of FILE the Hub sent, as [first, end)."""
    out = []
    for r in hub.requests:
        if r.repo_file == FILE:
            assert r.range, "the whole file was downloaded"
            first, last = r.range.removeprefix("bytes=").split("-")
            out.append((int(first), int(last) + 1))
    return out


def test_rows_read_from_the_hub_equal_the_local_files_and_cost_only_their_row_groups(hub, mirror, monkeypatch, tmp_path):
    fake_hub_env(monkeypatch, hub, tmp_path)
    local = mirror / FILE
    meta = pq.read_metadata(local)
    assert meta.num_row_groups >= 3
    start, stop = meta.row_group(0).num_rows + 3, meta.row_group(0).num_rows + meta.row_group(1).num_rows - 2
    hub.clear_requests()
    got = [b for b in source.read_rows(hub.hf_uri(FILE), ["text", "id"], start, stop, batch_size=7)]
    want = [b for b in source.read_rows(local, ["text", "id"], start, stop, batch_size=7)]
    assert sum(b.num_rows for b in got) == stop - start
    assert [b.to_pylist() for b in got] == [b.to_pylist() for b in want]
    # the footer, then row group 1 alone: nothing of the row groups before or after it
    columns = [meta.row_group(1).column(c) for c in range(meta.row_group(1).num_columns)]
    starts = [c.dictionary_page_offset or c.data_page_offset for c in columns]
    first, end = min(starts), max(s + c.total_compressed_size for s, c in zip(starts, columns))
    assert end == min(c.dictionary_page_offset or c.data_page_offset
                      for c in (meta.row_group(2).column(i) for i in range(len(columns))))
    size = local.stat().st_size
    assert sorted(sent(hub)) == [(first, end), (size - 8 - meta.serialized_size, size - 8), (size - 8, size)]


def test_a_byte_that_was_not_fetched_is_never_made_up():
    pieces = remote.Pieces(100, [(10, b"x" * 10), (90, b"y" * 10)])
    pieces.seek(12)
    assert pieces.read(5) == b"xxxxx"
    with pytest.raises(OSError, match="byte 20 of the file was not fetched"):
        pieces.read(10)
    pieces.seek(50)  # a read to the end, like pyarrow's look for the footer: before the footer is not used
    assert pieces.read() == bytes(40) + b"y" * 10


def test_a_file_that_does_not_end_like_parquet_is_a_source_error(hub, mirror, monkeypatch, tmp_path):
    fake_hub_env(monkeypatch, hub, tmp_path)
    with pytest.raises(SourceError, match="does not end like a parquet file"):
        remote.footer(hub.hf_uri("README.md"))
