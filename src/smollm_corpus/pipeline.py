"""fetch(): one dataset from the source to ``input.txt``, in dataset order, resumable at any moment.

Stages: the source's files are brought to disk a few ahead and cut into chunks (whole row
groups, 8 to 32 MB, for the text subsets; 4,096 rows for python-edu); workers (threads where
the work is all Arrow's, else processes) turn each chunk into a part (read rows, fetch contents,
render); this process appends finished parts to the output strictly in chunk order and
checkpoints twice a second (fsync, then the manifest). Output bytes therefore never depend on ``num_proc`` or on where a
previous run stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from . import formats, shards, source, template as templates
from .errors import OutputError, UsageError, writing
from .manifest import Manifest
from .run import Interrupted, Run
from .stats import Stats
from .subsets import FAMILIES, HUB_PREFIX, DatasetSpec, get_subset
from .where import parse as parse_where
from .worker import BATCH_ROWS, HYDRATE_ROWS, Job, WorkerPool, in_threads

if TYPE_CHECKING:
    from .dedup import Pass
    from .sample import Sample

__all__ = ["FetchResult", "Interrupted", "Progress", "configs_of", "fetch"]

log = logging.getLogger("smollm_corpus")

#: S3 requests in flight per worker process by default: at 30 ms per request (S3 in-region) that is
#: about 1,000 requests/s, as much as one core could do with boto3 sending them (about 1 ms of CPU each)
WORKERS_PER_PROCESS = 32
TERMS = (
    "python-edu contents come from Software Heritage. Its terms ask that bulk downloads be agreed "
    "with Software Heritage and INRIA first: write to datasets@softwareheritage.org."
)


@dataclass
class Progress:
    """How far a fetch has got, counting work still in the workers' hands (the bar's view)."""

    subset: str
    total_rows: int | None
    rows: int = 0
    documents: int = 0
    bytes: int = 0
    skipped: Counter | None = None
    token_bytes: int | None = None  # token formats: bytes per token (``bytes`` counts the ids' bytes)
    hydrated: bool = False  # rows are python-edu blobs fetched from S3

    @property
    def tokens(self) -> int | None:
        return None if self.token_bytes is None else self.bytes // self.token_bytes


@dataclass
class FetchResult:
    subset: str
    output: Path
    manifest: Path
    stats: Stats
    already_complete: bool
    seconds: float
    token_bytes: int | None = None  # token formats: bytes per token

    @property
    def tokens(self) -> int | None:
        return None if self.token_bytes is None else self.stats.bytes // self.token_bytes


def fetch(
    subset: str,
    out_dir: str | os.PathLike = ".",
    *,
    source_repo: str | None = None,
    revision: str | None = None,
    split: str = "train",
    num_proc: int | None = None,
    limit: int | None = None,
    max_bytes: int | None = None,
    template: str | None = None,
    separator: str | None = None,
    format: str = "txt",
    overwrite: bool = False,
    bucket: str = "softwareheritage",
    s3_endpoint_url: str | None = None,
    region: str = "us-east-1",
    no_sign_request: bool = False,
    s3_client: str = "lean",
    workers: int | None = None,
    tokenizer: str | None = None,
    eot: str | None = None,
    val_tokens: int | None = None,
    shard_tokens: int | None = None,
    max_tokens: int | None = None,
    where: Sequence[str] = (),
    decontaminate: bool = False,
    benchmarks: str | None = None,
    decontam_ngram: int | None = None,
    decontam_threshold: float | None = None,
    dask: str | None = None,
    dask_wait: float = 120,
    progress: Callable[[Progress], None] | None = None,
    dedup: "Pass | None" = None,
    sample: "Sample | None" = None,
) -> FetchResult:
    """Fetch ``subset`` into ``out_dir/<folder>/input.txt`` (or ``input.jsonl``), resuming a previous run.

    Args:
        subset: a SmolLM-Corpus subset (:data:`smollm_corpus.SUBSETS`), ``cosmopedia/<config>``,
            ``cosmopedia-100k``, or any Hub dataset with parquet files as ``hf:OWNER/NAME[:CONFIG]``.
        out_dir: the folder that receives the dataset's folder: ``<subset>/``, ``cosmopedia/<config>/``,
            ``cosmopedia-100k/`` or ``hf/OWNER/NAME/CONFIG/``.
        source_repo: a Hub dataset id, or a local folder laid out like the Hub repository (default: the
            dataset's own repository).
        revision: a Hub branch, tag or commit.
        split: the split of the config to read.
        num_proc: worker processes (default: one per CPU).
        limit: only the first ``limit`` rows of the subset, in dataset order.
        max_bytes: stop at the last whole document before the output passes this size.
        template: a preset name (``text``, ``nanogpt``) or a string with ``{column}`` placeholders;
            ``\\n``, ``\\t`` and ``\\\\`` are interpreted.
        separator: between documents (default: the preset's, ``\\n\\n`` for custom templates); txt only.
        format: ``txt``, ``jsonl`` (one object per document with every column, ``text`` rendered), or
            token ids: ``bin`` (llm.c shards, each document preceded by end-of-text) or ``nanogpt``
            (``train.bin``, ``val.bin`` and ``meta.pkl``, each document followed by end-of-text).
        overwrite: discard a previous output of this subset, complete or not.
        bucket, s3_endpoint_url, region, no_sign_request, s3_client, workers: where and how python-edu
            contents are fetched; ``s3_client`` is ``lean`` (boto3's requests, signed by botocore,
            sent by a lighter client; ``urllib3`` is its former name) or ``boto3``; ``workers`` bounds the requests in flight over all processes
            (default: 32 per process).
        tokenizer, eot: token formats: a Hub model id, ``gpt2``, a ``tokenizer.json`` or a folder holding
            one (default: SmolLM's own), and the end-of-text token (default ``<|endoftext|>``).
        val_tokens: token formats: validation is the first whole documents holding this many tokens
            (default 100M, but at most the documents of the first 1% of the rows read; 0 for none).
        shard_tokens: ``bin``: tokens per shard (default 100M).
        max_tokens: token formats: stop at the last whole document before this many tokens.
        where: row filters (see :mod:`smollm_corpus.where`), ANDed; rows they drop are counted as
            ``filtered`` and cost nothing more (python-edu fetches no content for them).
        decontaminate, benchmarks, decontam_ngram, decontam_threshold: drop documents whose text
            copies a benchmark sample (the Cosmopedia recipe, every candidate sample compared); the
            benchmark set is a Hub dataset id or a local parquet/jsonl file or folder (default
            ``HuggingFaceTB/phi2_eval_data_for_decontamination``), n-grams of 10 words, dropped above 0.5.
        dask: run the chunks' work on a Dask cluster: its scheduler's address (``tcp://HOST:PORT``,
            ``tls://...`` with Dask's TLS settings) or the scheduler file ``dask scheduler --scheduler-file``
            wrote. This process still plans, appends and checkpoints: the output is the same.
        dask_wait: seconds to wait for a Dask worker when there is none, at the start or after all have left.
        progress: called often with the run's :class:`Progress`.
        dedup: one pass of a deduplicated fetch (see :func:`smollm_corpus.fetch_all`), which gives it.
        sample: one input's sampling pass of a mix (see :func:`smollm_corpus.mix`), which gives it.

    Returns:
        The run's counters and paths; ``already_complete`` when a previous run had finished.

    Raises:
        UsageError: bad options, an unknown name or split, an ``hf:`` name without a config where the
            repository has several, or a template naming no column (before anything is written).
        SourceError: the source cannot be read, or its data files are not parquet.
        OutputError: the output folder cannot be written, or holds a different fetch.
        Interrupted: stopped by Ctrl-C or SIGTERM; rerunning resumes.
    """
    started = time.monotonic()
    spec = get_subset(subset)
    if dask is not None and num_proc is not None:
        raise UsageError("--num-proc sets this machine's workers; with --dask the cluster's workers run the chunks "
                         "(choose their number with dask worker --nworkers and --nthreads)")
    num_proc = _check_options(num_proc, limit, max_bytes, format, separator, workers, s3_endpoint_url, s3_client)
    source_repo = source_repo or spec.repo
    if spec.config is None:
        spec = spec.with_config(_default_config(spec, source_repo, revision))
    subset = spec.name
    tokens = formats.token_output(format, tokenizer, eot, val_tokens, shard_tokens, max_tokens)
    decontaminator = _decontaminator(decontaminate, benchmarks, decontam_ngram, decontam_threshold)
    jsonl = format == "jsonl"
    preset = spec.presets.get(template or "text")
    template_text = preset.template if preset else templates.unescape(template or "")
    sep = "" if format != "txt" else templates.unescape(separator) if separator is not None else preset.separator if preset else "\n\n"
    options = {
        "subset": subset,
        "source": source_repo,
        "revision": revision,
        "split": split,
        "template": template_text,
        "strip": bool(preset and preset.strip),
        "separator": sep,
        "format": format,
        "limit": limit,
        "max_bytes": max_bytes,
        "bucket": bucket if spec.hydrated else None,
        "where": list(where) or None,
        "decontaminate": decontaminator.identity() if decontaminator else None,
        "dedup": dedup.identity if dedup else None,
        "mix": sample.identity if sample else None,
        **(tokens.identity if tokens else {}),
    }
    folder = Path(out_dir) / spec.folder
    output = folder if tokens else folder / ("input.jsonl" if jsonl else "input.txt")
    manifest_path = folder / "manifest.json"
    partial = output.with_name(output.name + ".incomplete")
    layout = tokens.layout(spec.prefix) if tokens else None
    if dedup is not None:
        dedup.folder = folder
    if sample is not None:
        sample.folder = folder
    signing = dedup is not None and dedup.signing

    previous = None if overwrite else Manifest.load(manifest_path)
    if previous is not None and previous.options["split"] is None:
        previous.options["split"] = "train"  # recorded before --split existed, when every fetch read train
    changed = previous.differences(options) if previous is not None else []
    if previous is not None and previous.complete and not changed:
        if tokens:
            missing = [f["name"] for f in previous.token_files["files"] if not (folder / f["name"]).exists()]
            if missing:
                raise OutputError(f"{folder} holds a complete fetch whose files are missing ({', '.join(missing)}); "
                                  "add --overwrite to fetch it again")
            return FetchResult(subset, output, manifest_path, previous.stats, True, time.monotonic() - started,
                               tokens.itemsize)
        if output.exists() or partial.exists():
            with locked(folder):
                if not output.exists():
                    os.replace(partial, output)  # a run that stopped between its last two steps
            return FetchResult(subset, output, manifest_path, previous.stats, True, time.monotonic() - started)

    if spec.hydrated and workers is not None:
        num_proc = min(num_proc, workers)  # each process keeps at least one request in flight
    if tokens:  # each worker encodes its own chunk on its own core: the tokenizer's own thread pool would compete
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = in_threads(templates.parse(template_text, strip=bool(preset and preset.strip)), format, max_bytes,
                         spec.hydrated or signing or bool(sample and sample.sign))  # signing holds the GIL
    pool = dedup.pool() if dedup is not None and not signing else _pool(num_proc, threads, dask, dask_wait, folder)
    with pool:  # worker processes start while the source is resolved
        pinned = previous.commit if previous is not None else None  # a resume reads the same commit
        src = source.resolve(source_repo, spec.config, pinned or revision, split)
        row_filter = parse_where(where, src.schema) if where else None  # before hydration: on the source's columns
        schema = src.schema
        if spec.hydrated and "text" not in schema.names:
            schema = schema.append(pa.field("text", pa.string()))
        parsed, _ = templates.resolve(spec, template, schema)
        if changed:
            raise OutputError(
                f"{folder} holds a fetch made with other options (differing: {', '.join(changed)}); "
                "add --overwrite to replace it, or choose another --out-dir"
            )
        if jsonl:
            columns = tuple(n for n in schema.names if n != "text" or not spec.hydrated)
        elif spec.hydrated:
            columns = tuple(dict.fromkeys(["blob_id", *(c for c in parsed.columns if c != "text")]))
        else:
            columns = tuple(parsed.columns)
        if row_filter:
            columns = tuple(dict.fromkeys([*columns, *row_filter.columns]))
        if decontaminator and not spec.hydrated:
            if "text" not in src.schema.names:
                raise UsageError(f"--decontaminate compares the text column, and {subset} has none")
            columns = tuple(dict.fromkeys([*columns, "text"]))
        s3 = _s3_options(bucket, s3_endpoint_url, region, no_sign_request, s3_client) if spec.hydrated else None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output folder {folder}: {e.strerror}; choose another --out-dir") from e
        with locked(folder):
            manifest = None if overwrite else Manifest.load(manifest_path)
            if manifest is None:
                _clear(folder, manifest_path, layout, spec.prefix)
                manifest = Manifest(options, commit=src.commit)
                if signing or sample is not None:
                    manifest.save(manifest_path)  # the commit read first is the commit read on
            total = src.num_rows if limit is None else limit if src.num_rows is None else min(limit, src.num_rows)
            if tokens:
                max_bytes = None if max_tokens is None else max_tokens * tokens.itemsize  # the stream's bytes are ids
            run = Run(spec, src, manifest, manifest_path, folder, output, partial, limit, max_bytes, sep.encode(),
                       tokens, total)
            requests = WORKERS_PER_PROCESS if workers is None else workers // pool.size  # never more than asked
            stages = tuple(stage for stage in (row_filter, s3 and _hydrate_stage(s3, requests),
                                               decontaminator) if stage)
            job = Job(run.parts_dir, parsed, jsonl, sep.encode(), max_bytes, columns, in_memory=pool.in_memory,
                      stages=stages, tokenizer=tokens.tokenizer if tokens else None,
                      eot=tokens.eot if tokens else "before",
                      # contents are fetched a whole chunk at a time, so that requests keep flowing across batches
                      batch_rows=HYDRATE_ROWS if s3 else BATCH_ROWS, one_at_a_time=bool(s3))
            view = Progress(subset, total, token_bytes=tokens.itemsize if tokens else None, hydrated=spec.hydrated)
            if sample is not None:
                view.subset = f"{subset} (sampling)"
                stats = sample.run(run, job, pool, view, progress)
                return FetchResult(subset, output, manifest_path, stats, False, time.monotonic() - started,
                                   tokens.itemsize if tokens else None)
            if signing:
                view.subset = f"{subset} (signing)"
                stats = dedup.sign(run, job, pool, view, progress)
                return FetchResult(subset, output, manifest_path, stats, False, time.monotonic() - started,
                                   tokens.itemsize if tokens else None)
            planned = {} if dedup is None else {"planned": dedup.chunks(manifest.position), "downloads": pool}
            stats = run.execute(job, pool, view, progress, **planned)
    return FetchResult(subset, output, manifest_path, stats, False, time.monotonic() - started,
                       tokens.itemsize if tokens else None)


def _pool(num_proc: int, threads: bool, dask: str | None, wait: float, folder: Path):
    """The workers: this machine's threads or processes, or a Dask cluster's (for the output ``folder``)."""
    if dask is None:
        return WorkerPool(num_proc, threads)
    from .cluster import DaskPool  # distributed is imported for a cluster only

    return DaskPool(dask, wait, str(folder.resolve()))


def _default_config(spec: DatasetSpec, repo: str, revision: str | None) -> str:
    """The config a name without one reads: the repository's only config, or the one named ``default``."""
    configs = source.config_names(repo, revision)
    if len(configs) == 1:
        return configs[0]
    if "default" in configs:
        return "default"
    raise UsageError(
        f"{repo} has several configs and none named 'default'; name one, as in {spec.name}:{configs[0]}, "
        f"or add --all-configs to fetch each; configs: {', '.join(configs)}"
    )


def configs_of(name: str, source_repo: str | None = None, revision: str | None = None) -> list[str]:
    """The names ``fetch NAME --all-configs`` fetches: ``cosmopedia``'s eight, or each config of ``hf:OWNER/NAME``.

    Raises:
        UsageError: ``name`` stands for no set of configs.
        SourceError: the repository cannot be read.
    """
    if name in FAMILIES:
        return list(FAMILIES[name])
    spec = get_subset(name)
    if not spec.name.startswith(HUB_PREFIX) or spec.config is not None:
        raise UsageError(
            f"--all-configs takes {', '.join(FAMILIES)} or hf:OWNER/NAME (without a config), not {name!r}"
        )
    return [spec.with_config(c).name for c in source.config_names(source_repo or spec.repo, revision)]


def _check_options(num_proc, limit, max_bytes, format, separator, workers, s3_endpoint_url, s3_client) -> int:
    if format != "txt" and separator is not None:
        raise UsageError(f"--separator applies to txt output only; {format} writes each document on its own")
    if format in formats.TOKEN_FORMATS and max_bytes is not None:
        raise UsageError(f"--max-bytes applies to text formats; for {format} use --max-tokens")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be 0 or more")
    if max_bytes is not None and max_bytes <= 0:
        raise UsageError("--max-bytes must be more than 0")
    if s3_endpoint_url is not None and not s3_endpoint_url.startswith(("http://", "https://")):
        raise UsageError(f"--s3-endpoint-url {s3_endpoint_url!r} must start with http:// or https://")
    if s3_client not in ("lean", "boto3", "urllib3"):
        raise UsageError(f"unknown S3 client {s3_client!r}; choose lean or boto3")
    if workers is not None and workers < 1:
        raise UsageError("--workers must be 1 or more")
    if num_proc is not None and num_proc < 1:
        raise UsageError("--num-proc must be 1 or more")
    return num_proc or os.cpu_count() or 1


def _decontaminator(decontaminate: bool, benchmarks: str | None, ngram: int | None, threshold: float | None):
    """The decontamination --decontaminate asks for, its benchmark set loaded; None without it."""
    if not decontaminate:
        given = [name for name, value in (("--benchmarks", benchmarks), ("--decontam-ngram", ngram),
                                          ("--decontam-threshold", threshold)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply with --decontaminate only; add it")
        return None
    from .decontaminate import Decontaminator
    from .evalsets import load_benchmarks

    return Decontaminator(load_benchmarks(benchmarks), 10 if ngram is None else ngram, 0.5 if threshold is None else threshold)


def _hydrate_stage(s3, requests: int):
    from .hydrate import Hydrate  # boto3 is imported for python-edu only

    return Hydrate(s3, requests)


def _s3_options(bucket: str, endpoint_url: str | None, region: str, no_sign_request: bool, client: str):
    from .hydrate import S3Options, credentials_available

    log.warning(TERMS)
    unsigned = no_sign_request
    if not credentials_available(probe=not unsigned) and not unsigned:
        log.warning("no AWS credentials found: sending unsigned requests (as with --no-sign-request)")
        unsigned = True
    return S3Options(bucket=bucket, endpoint_url=endpoint_url, region=region, unsigned=unsigned,
                     client="lean" if client == "urllib3" else client)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs (an OutputError when another process holds it)."""
    with writing(folder / ".lock"):
        lock = open(folder / ".lock", "w")
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another smollm-corpus fetch is writing to {folder}; wait for it, or choose another --out-dir") from None
        yield


def _clear(folder: Path, manifest_path: Path, layout: shards.Layout | None, prefix: str) -> None:
    """Remove a previous run's files (only this tool's own files: the folder may hold others)."""
    with writing(folder):
        _remove_outputs(folder, manifest_path)
        for token_layout in {layout, *(shards.Layout(f, prefix, 2, None) for f in formats.TOKEN_FORMATS)} - {None}:
            shards.clear(folder, token_layout)


def _remove_outputs(folder: Path, manifest_path: Path) -> None:
    for name in ("input.txt", "input.jsonl", "input.txt.incomplete", "input.jsonl.incomplete", "missing_blobs.txt",
                 "decontamination.jsonl", "duplicates.jsonl"):
        (folder / name).unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)
    for name in (".parts", ".staging"):
        shutil.rmtree(folder / name, ignore_errors=True)


