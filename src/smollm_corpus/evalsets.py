"""Benchmark sets: the evaluation samples that decontamination compares documents with.

A set is a dataset with a ``text`` column (one sample per row) and optionally ``task_name``: by
default the one the Cosmopedia recipe uses, on the Hub; or another Hub dataset, a parquet or
jsonl file, or a folder of them. Hub datasets come through the Hugging Face cache, so a set read
once is read offline afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SourceError, UsageError
from .hub import hub_download

DEFAULT_BENCHMARKS = "HuggingFaceTB/phi2_eval_data_for_decontamination"
_SUFFIXES = (".parquet", ".jsonl")
_EXPECTED = (
    "give a Hub dataset id, a parquet or jsonl file, or a folder of them, with a 'text' column "
    "(one benchmark sample per row) and optionally 'task_name'"
)


@dataclass(frozen=True)
class Benchmarks:
    """Benchmark samples, and where they come from."""

    source: str  # Hub dataset id, file or folder, as given
    sha256: str  # of the samples' tasks and texts: a rerun with other benchmarks differs here
    texts: tuple[str, ...] = field(repr=False)
    tasks: tuple[str, ...] = field(repr=False)


def load_benchmarks(ref: str | None = None) -> Benchmarks:
    """Read benchmark samples from ``ref``: a Hub dataset id (default :data:`DEFAULT_BENCHMARKS`),
    a parquet or jsonl file, or a folder of them (its train split, named as on the Hub).

    Hub datasets are downloaded into the Hugging Face cache and read from there afterwards, also
    offline; HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE apply.

    Raises:
        SourceError: ``ref`` cannot be read, or holds no samples or no ``text`` column.
    """
    ref = ref or DEFAULT_BENCHMARKS
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")) or local.suffix in _SUFFIXES:
        if not local.exists():
            raise SourceError(f"benchmark file or folder {ref} does not exist; {_EXPECTED}")
        files = [local] if local.is_file() else _train_files(local, ref)
    else:
        files = _train_files(_download(ref), ref)
    texts: list[str] = []
    tasks: list[str] = []
    for file in files:
        _read(file, texts, tasks)
    if not texts:
        raise SourceError(f"{ref} holds no benchmark samples; {_EXPECTED}")
    digest = hashlib.sha256()
    for task, text in zip(tasks, texts):
        for value in (task, text):
            data = value.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little") + data)
    return Benchmarks(ref, digest.hexdigest(), tuple(texts), tuple(tasks))


def _download(repo: str) -> Path:
    """The dataset's parquet and jsonl files, through the Hugging Face cache."""
    from huggingface_hub import errors as hf
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except hf.HFValidationError:
        raise UsageError(f"benchmarks {repo!r} are not a file, a folder or a Hub dataset id; {_EXPECTED}") from None

    what = f"the benchmark dataset {repo}"
    path = hub_download(
        lambda: snapshot_download(repo, repo_type="dataset", allow_patterns=[f"*{s}" for s in _SUFFIXES]), what,
        missing=f"benchmarks {repo!r} are not a local file or folder, and the Hub has no dataset {repo} "
                f"(or it is private: set HF_TOKEN); {_EXPECTED}",
        local="give a local copy: a parquet or jsonl file, or a folder of them")
    return Path(path)


def _train_files(folder: Path, ref: str) -> list[Path]:
    """The parquet and jsonl files of the folder's train split, as ``load_dataset`` would choose them."""
    from datasets.data_files import get_data_patterns, resolve_pattern

    files: set[str] = set()
    try:
        for pattern in get_data_patterns(str(folder)).get("train", []):
            with contextlib.suppress(FileNotFoundError):  # a pattern of the split that no file of ours matches
                files.update(resolve_pattern(pattern, str(folder), allowed_extensions=list(_SUFFIXES)))
    except FileNotFoundError:  # datasets' EmptyDatasetError: no data file at all
        pass
    if not files:
        raise SourceError(f"{ref} has no parquet or jsonl files of a train split; {_EXPECTED}")
    return [Path(f) for f in sorted(files)]


def _read(file: Path, texts: list[str], tasks: list[str]) -> None:
    if file.suffix == ".parquet":
        try:
            with pq.ParquetFile(file) as parquet:  # not read_table, which imports pyarrow.dataset (0.2 s) for one file
                names = parquet.schema_arrow.names
                if "text" not in names:
                    raise SourceError(f"{file} has no 'text' column (it has {', '.join(names)}); {_EXPECTED}")
                table = parquet.read(columns=[c for c in ("text", "task_name") if c in names])
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"cannot read {file} ({e}); repair or replace it, then rerun") from None
        rows = table.to_pylist()
    else:
        rows = []
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise SourceError(f"line {number} of {file} is not JSON ({e}); {_EXPECTED}") from None
    for number, row in enumerate(rows, 1):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise SourceError(f"row {number} of {file} has no 'text' string; {_EXPECTED}")
        texts.append(text)
        tasks.append(str(row.get("task_name") or "unknown"))


# ---------------------------------------------------------------------------------------------
# normalisation
