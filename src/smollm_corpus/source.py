"""Loading: resolve a dataset's parquet files on the Hub (or in a local mirror), and read their rows.

Config, data files, schema and sizes come from ``datasets`` (the repository's README front
matter, exactly as ``load_dataset`` reads it). Files are then read one at a time with
pyarrow instead of through ``load_dataset``'s Arrow cache, which would need 1.7x the whole
subset on disk before the first document could be written (:mod:`downloads` brings them to disk,
or :mod:`remote` reads parts of them). Everything goes through ``huggingface_hub``, so HF_TOKEN,
HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE apply.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SourceError, UsageError
from .hub import with_retries

HF_URL = re.compile(r"^hf://datasets/(?P<repo>.+?)@(?P<revision>[^/]+)/(?P<path>.+)$")
T = TypeVar("T")
_LAID_OUT = "expected a folder laid out like the Hub repository: "


@dataclass(frozen=True)
class SourceFile:
    """One parquet file of a dataset, in dataset order."""

    index: int
    name: str  # path inside the repository, e.g. "python-edu/train-00000-of-00002.parquet"
    location: str  # local path, or hf:// URL pinned to a commit


@dataclass(frozen=True)
class Source:
    """A dataset's config and split resolved to its files."""

    repo: str  # Hub dataset id or local directory, as given
    commit: str | None  # the commit the Hub resolved the revision to; None for a local directory
    files: tuple[SourceFile, ...]
    schema: pa.Schema
    num_rows: int | None  # from the dataset's metadata, where it declares it


def resolve(repo: str, config: str, revision: str | None = None, split: str = "train") -> Source:
    """Find the parquet files, schema and row count of ``split`` of ``config`` without downloading any data.

    Raises:
        SourceError: the directory or repository cannot be read, holds no such config, or its data
            files are not parquet.
        UsageError: the config has no such split.
    """
    local = _local_root(repo)
    if local is not None:
        return _resolve_local(local, config, split, repo)
    return with_retries(lambda: _resolve_hub(repo, config, split, revision), f"the Hub repository {repo}")


def config_names(repo: str, revision: str | None = None) -> list[str]:
    """The configs ``repo`` (a Hub dataset id or a local folder laid out like one) declares, as ``load_dataset`` sees them.

    Raises:
        SourceError: the directory or repository cannot be read.
    """
    import datasets

    local = _local_root(repo)
    if local is not None:
        _check_folder(local, repo)
        return _reading(lambda: datasets.get_dataset_config_names(str(local.resolve())), repo)

    def hub() -> list[str]:
        from huggingface_hub import HfApi

        commit = HfApi().dataset_info(repo, revision=revision).sha  # pinned: datasets asks nothing else then
        return _reading(lambda: datasets.get_dataset_config_names(repo, revision=commit), repo)

    return with_retries(hub, f"the Hub repository {repo}")


def _local_root(repo: str) -> Path | None:
    local = Path(repo).expanduser()
    return local if local.exists() or repo.startswith((".", "/", "~")) else None


def _check_folder(root: Path, given: str, expected: str = _LAID_OUT + "README.md and its data files") -> None:
    if not root.is_dir():
        raise SourceError(f"source folder {given} does not exist; {expected}, or a Hub dataset id")
    if not (root / "README.md").is_file():
        raise SourceError(f"source folder {given} has no README.md; {expected}")


def _resolve_local(root: Path, config: str, split: str, given: str) -> Source:
    expected = f"{_LAID_OUT}README.md whose front matter declares the config {config!r}, and its parquet files"
    _check_folder(root, given, expected)
    builder = _builder(str(root.resolve()), config, None, given)
    files = _data_files(builder, config, split, given)
    missing = [f for f in files if not os.path.exists(f)]
    if not files or missing:
        raise SourceError(f"source folder {given} has no parquet files for {config}; {expected}")
    return Source(given, None, _source_files(files, root), _schema(builder, files[0]), _rows(builder, split))


def _resolve_hub(repo: str, config: str, split: str, revision: str | None) -> Source:
    from huggingface_hub import HfApi

    commit = HfApi().dataset_info(repo, revision=revision).sha
    builder = _builder(repo, config, commit, repo)
    files = _data_files(builder, config, split, repo)
    if not files:
        raise SourceError(f"{repo} at {revision or 'main'} has no data files for {config}")
    return Source(repo, commit, _source_files(files, None), _schema(builder, files[0]), _rows(builder, split))


def _builder(path: str, config: str, revision: str | None, given: str):  # -> datasets.DatasetBuilder
    import datasets

    try:
        return _reading(lambda: datasets.load_dataset_builder(path, config, revision=revision), given)
    except ValueError as e:
        if "BuilderConfig" in str(e) or "config" in str(e).lower():
            raise SourceError(f"{given} declares no config {config!r}: {e}") from None
        raise


def _reading(call: Callable[[], T], given: str) -> T:
    """Run a ``datasets`` call on ``given``, naming a loading script (which ``datasets`` no longer runs) as such."""
    try:
        return call()
    except RuntimeError as e:
        if "script" not in str(e).lower():
            raise
        raise SourceError(
            f"{given} is defined by a loading script, not by parquet data files ({e}); smollm-corpus reads "
            "parquet files only: convert the dataset to parquet in a folder laid out like the repository "
            "and pass that folder as --source"
        ) from None


def _data_files(builder, config: str, split: str, given: str) -> list[str]:
    data_files = builder.config.data_files or {}
    if split not in data_files:
        if not data_files:
            raise SourceError(f"{given} declares no data files for {config}")
        raise UsageError(
            f"{given} config {config!r} has no split {split!r}; its splits: {', '.join(data_files)}; "
            "choose one with --split"
        )
    files = sorted(data_files[split], key=lambda f: _repo_path(f))
    others = [_repo_path(f) for f in files if not _repo_path(f).endswith(".parquet")]
    if others:
        raise SourceError(
            f"{given} config {config!r} holds {builder.name} data files, not parquet (e.g. {others[0]}); "
            "smollm-corpus reads parquet files only: convert them to parquet in a folder laid out like the "
            "repository and pass that folder as --source"
        )
    return files


def _repo_path(location: str) -> str:
    match = HF_URL.match(location)
    return match.group("path") if match else location


def _source_files(files: list[str], root: Path | None) -> tuple[SourceFile, ...]:
    def name(location: str) -> str:
        if root is None:
            return _repo_path(location)
        return Path(location).resolve().relative_to(root.resolve()).as_posix()

    return tuple(SourceFile(i, name(f), f) for i, f in enumerate(files))


def _schema(builder, first_file: str) -> pa.Schema:
    if builder.info.features is not None:
        return builder.info.features.arrow_schema
    # No dataset_info in the README: the first file's footer says it (a small range read).
    with _open(first_file) as f:
        return pq.read_schema(f)


def _rows(builder, split: str) -> int | None:
    splits = builder.info.splits or {}
    return splits[split].num_examples if split in splits else None


@contextlib.contextmanager
def _open(location: str) -> Iterator:
    """Open a file for small reads: from disk where it is local or cached, else by HTTP range requests."""
    local = local_copy(location)
    if local is not None:
        with open(local, "rb") as f:
            yield f
        return
    from huggingface_hub import HfFileSystem

    with HfFileSystem().open(location, "rb") as f:
        yield f


def local_copy(location: str) -> str | None:
    """The path of ``location`` on this machine: itself, or its copy in the Hugging Face cache."""
    match = HF_URL.match(location)
    if match is None:
        return location
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(
        match.group("repo"), match.group("path"), revision=unquote(match.group("revision")), repo_type="dataset"
    )
    return cached if isinstance(cached, str) else None


def is_local(location: str) -> bool:
    """Whether ``location`` is a path on disk rather than a file on the Hub."""
    return HF_URL.match(location) is None


def read_metadata(file: SourceFile, path: Path | str) -> pq.FileMetaData:
    """The footer of ``file``, read from its local copy at ``path``, or from the Hub where ``path`` is its location.

    Raises:
        SourceError: the copy is not a readable parquet file, or the Hub cannot be read.
    """
    if not is_local(str(path)):
        from . import remote

        with damaged(file, Path(file.name)):
            return with_retries(lambda: remote.footer(str(path)), file.name).metadata
    with damaged(file, Path(path)):
        return pq.read_metadata(path)


@contextlib.contextmanager
def damaged(file: SourceFile, path: Path) -> Iterator[None]:
    """Turn a parquet read error into a SourceError that says which file and what to do."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise SourceError(
            f"cannot read {file.name} at {path} ({e}); the file is damaged or incomplete: delete that copy "
            "(it is downloaded again) or repair the --source folder, then rerun the same command"
        ) from None


def read_rows(
    path: Path | str, columns: list[str], start: int = 0, stop: int | None = None, batch_size: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Rows ``start`` to ``stop`` of a parquet file, in order, reading only the row groups that hold them.

    ``path`` is a local file, or a location on the Hub (``hf://``) whose footer and row groups are then
    downloaded with range requests: only the bytes of those row groups.

    Raises:
        SourceError: the Hub cannot be read (after retries).
    """
    if is_local(str(path)):
        # pre_buffer would read every requested row group up front: memory would grow with the file
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        meta = pf.metadata
    else:
        from . import remote

        found = with_retries(lambda: remote.footer(str(path)), str(path))
        meta = found.metadata
    stop = meta.num_rows if stop is None else min(stop, meta.num_rows)
    groups, first = [], None
    offset = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return
    if not is_local(str(path)):
        pf = with_retries(lambda: remote.row_groups(str(path), found, groups), str(path))
    position = first
    for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns, use_threads=False):
        lo, hi = max(start - position, 0), min(stop - position, batch.num_rows)
        position += batch.num_rows
        if hi > lo:
            yield batch.slice(lo, hi - lo) if (lo, hi) != (0, batch.num_rows) else batch
        if position >= stop:
            return
