"""The command line: parse options, call the library, show progress, turn errors into messages."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import sys
import time

import click

from . import __version__
from .errors import SmollmCorpusError
from .formats import FORMATS
from .pipeline import FetchResult, Progress, configs_of, fetch
from .subsets import COSMOPEDIA, COSMOPEDIA_CONFIGS, HUB_PRESETS, MIX_PRESETS, SUBSETS, DatasetSpec, get_subset

class Quantity(click.ParamType):
    """A number with an optional unit letter: ``Size`` (500M, 2G: powers of 1024) or ``Count`` (100M, 2.5B)."""

    def __init__(self, name: str, units: dict[str, int], example: str, suffix: str = "") -> None:
        self.name, self.units, self.example = name, units, example
        self.pattern = re.compile(rf"^\s*(\d+(?:\.\d+)?)\s*([{''.join(u for u in units if u)}]?){suffix}\s*$",
                                  re.IGNORECASE)

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = self.pattern.match(value)
        if not match:
            self.fail(f"{value!r} is not a {self.name}; write it like {self.example}", param, ctx)
        return int(float(match.group(1)) * self.units[match.group(2).lower()])


def Size() -> Quantity:  # noqa: N802 - used like a click type
    return Quantity("size", {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}, "500M, 2G or 1048576", "i?b?")


def Count() -> Quantity:  # noqa: N802 - used like a click type
    return Quantity("count", {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}, "100000, 100M or 2.5B")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smollm-corpus")
def main() -> None:
    """Fetch the SmolLM-Corpus (or Cosmopedia, or any parquet dataset on the Hub) and write it as training-ready text."""


@main.command("list")
def list_subsets() -> None:
    """Show each name: rows, download size, columns and templates; then how to name any other Hub dataset."""
    for s in SUBSETS.values():
        click.echo(f"{s.name}")
        _describe(s)
    click.echo("")
    click.echo(f"Cosmopedia v0.1 ({COSMOPEDIA['cosmopedia/stories'].repo}), one name per config, "
               "each into OUT_DIR/cosmopedia/<config>/; all eight: fetch cosmopedia --all-configs")
    for s in COSMOPEDIA.values():
        if s.name == "cosmopedia-100k":
            click.echo(f"{s.name}  (a 100k-row sample, {s.repo})")
            _describe(s)
        elif s.config == COSMOPEDIA_CONFIGS[-1]:
            click.echo(s.name)
            _describe(s)
        else:
            click.echo(s.name)
    click.echo("")
    click.echo("Any other Hub dataset with parquet data files:")
    click.echo("hf:OWNER/NAME[:CONFIG]")
    click.echo("  config:    CONFIG, else the repository's only config or the one named 'default'")
    click.echo("  output:    OUT_DIR/hf/OWNER/NAME/CONFIG/")
    click.echo("  rows, columns: read from the repository")
    _templates(HUB_PRESETS, "; needs a text column, else pass --template")


def _describe(s: DatasetSpec) -> None:
    card = " (dataset card)" if s.from_card else ""
    click.echo(f"  rows:      {s.rows}{card}")
    if s.download_size:
        click.echo(f"  download:  {s.download_size}")
    click.echo(f"  columns:   {', '.join(s.template_columns)}{card}")
    _templates(s.presets)


def _templates(presets, default_note: str = "") -> None:
    for name, preset in presets.items():
        note = f" (default{default_note})" if name == "text" else ""
        strip = ", values stripped" if preset.strip else ""
        click.echo(f"  template {name}{note}: {preset.template!r}, separator {preset.separator!r}{strip}")


@main.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all", "all_subsets", is_flag=True, help="Fetch the three SmolLM-Corpus subsets.")
@click.option("--all-configs", is_flag=True,
              help="Fetch every config of the names given: cosmopedia (its eight), or hf:OWNER/NAME.")
@click.option("-o", "--out-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Writes OUT_DIR/<subset>/input.txt and manifest.json (hf:OWNER/NAME:CONFIG: OUT_DIR/hf/OWNER/NAME/CONFIG/).")
@click.option("--source", "source_repo", envvar="SMOLLM_CORPUS_SOURCE",
              help="A Hub dataset id, or a local folder laid out like the Hub repository (env SMOLLM_CORPUS_SOURCE)  "
                   "[default: the name's own repository, HuggingFaceTB/smollm-corpus for the subsets]")
@click.option("--revision", help="Hub revision: a branch, tag or commit.")
@click.option("--split", default="train", show_default=True, help="The split to read, where a config has several.")
@click.option("--num-proc", type=click.IntRange(min=1), help="Workers: threads for a template that is one column as is (the default) and for tokenizing, else processes  [default: number of CPUs]")
@click.option("--limit", type=click.IntRange(min=0), help="Only the first N rows, in dataset order.")
@click.option("--max-bytes", type=Size(), help="Stop at the last whole document before the output passes SIZE (500M, 2G).")
@click.option("--template", help="A preset (text, nanogpt) or a string with {column} placeholders; \\n, \\t, \\\\ are interpreted.")
@click.option("--separator", help="Between documents  [default: \\n\\n, \\n for nanogpt]")
@click.option("--format", "format_", type=click.Choice(list(FORMATS)), default="txt", show_default=True,
              help="txt: input.txt; jsonl: input.jsonl, one object per document with every column; "
                   "bin: llm.c / modded-nanogpt token shards; nanogpt: train.bin, val.bin and meta.pkl for nanoGPT.")
@click.option("--tokenizer", help="Token formats: a Hub model id, gpt2, or a tokenizer.json (or its folder)  "
                                  "[default: HuggingFaceTB/SmolLM2-135M]")
@click.option("--eot", help="Token formats: the end-of-text token  [default: <|endoftext|>]")
@click.option("--val-tokens", type=Count(), help="Token formats: validation is the first whole documents holding N "
              "tokens, never in training; 0 for none  [default: 100M, but at most the documents of the first 1% of the rows read]")
@click.option("--shard-tokens", type=Count(), help="bin: tokens per shard  [default: 100M]")
@click.option("--max-tokens", type=Count(), help="Token formats: stop at the last whole document before N tokens.")
@click.option("--where", multiple=True, metavar="EXPR",
              help="Keep only rows where EXPR holds, e.g. \"metadata.int_score >= 4\" or \"format == 'textbook'\": "
                   "comparisons, and/or/not, in (...), is null, struct fields as a.b; repeat to AND them.")
@click.option("--decontaminate", is_flag=True,
              help="Drop documents that copy a benchmark sample (MMLU, HellaSwag, ARC, PIQA, ...): listed in "
                   "decontamination.jsonl.")
@click.option("--benchmarks", metavar="REPO_OR_PATH", help="--decontaminate: the benchmark texts, a Hub dataset or a "
              "parquet/jsonl file or folder  [default: HuggingFaceTB/phi2_eval_data_for_decontamination]")
@click.option("--decontam-ngram", type=click.IntRange(min=1), help="--decontaminate: words per shared n-gram  [default: 10]")
@click.option("--decontam-threshold", type=click.FloatRange(0, 1, max_open=True),
              help="--decontaminate: drop above this share of the sample matched  [default: 0.5]")
@click.option("--dedup", is_flag=True,
              help="Remove near-duplicates within and across the NAMES (MinHash, as the Cosmopedia recipe), keeping "
                   "the first in command order, then dataset order; listed in duplicates.jsonl. Needs "
                   "pip install 'smollm-corpus[dedup]'. Disk while it runs: the outputs' size, plus about 1.3 GB "
                   "per million documents.")
@click.option("--overwrite", is_flag=True, help="Discard a previous output, complete or partial, and start again.")
@click.option("--bucket", default="softwareheritage", show_default=True, help="python-edu: S3 bucket of the contents.")
@click.option("--s3-endpoint-url", envvar="AWS_ENDPOINT_URL", help="python-edu: S3 endpoint (env AWS_ENDPOINT_URL).")
@click.option("--region", default="us-east-1", show_default=True, help="python-edu: S3 region.")
@click.option("--no-sign-request", is_flag=True, help="python-edu: send unsigned S3 requests.")
@click.option("--s3-client", type=click.Choice(["lean", "boto3", "urllib3"]), default="lean", show_default=True,
              help="python-edu: lean sends the requests boto3 prepares, signed by botocore, at under a quarter of "
                   "boto3's CPU; boto3 sends them itself (urllib3: a former name of lean).")
@click.option("--workers", type=click.IntRange(min=1),
              help="python-edu: S3 requests in flight, over all processes  [default: 32 per worker process]")
@click.option("--dask", envvar="SMOLLM_CORPUS_DASK", metavar="ADDRESS",
              help="Run the work on a Dask cluster: its scheduler's address, tcp://HOST:8786 or tls://HOST:8786 "
                   "(env SMOLLM_CORPUS_DASK). Needs pip install 'smollm-corpus[dask]'; see the README.")
@click.option("--dask-scheduler-file", type=click.Path(dir_okay=False),
              help="Run the work on the Dask cluster this scheduler file (dask scheduler --scheduler-file) describes.")
@click.option("--dask-wait", type=click.FloatRange(min=0), default=120, show_default=True,
              help="Seconds to wait for the Dask scheduler to answer, and for a worker when there is none, before giving up.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, summary or notices.")
@click.option("-v", "--verbose", is_flag=True, help="More detail, and a traceback on errors.")
def fetch_command(names, all_subsets, all_configs, out_dir, source_repo, quiet, verbose, format_, dask_scheduler_file,
                  **options) -> None:
    """Fetch NAMES (or --all) into OUT_DIR/<name>/input.txt.

    A name is a SmolLM-Corpus subset, cosmopedia/<config>, cosmopedia-100k, or any Hub dataset
    with parquet files as hf:OWNER/NAME[:CONFIG] (see smollm-corpus list).

    \b
    Examples:
      smollm-corpus fetch cosmopedia-v2
      smollm-corpus fetch fineweb-edu-dedup --limit 10000 --template nanogpt
      smollm-corpus fetch python-edu --format jsonl --no-sign-request
      smollm-corpus fetch cosmopedia --all-configs
      smollm-corpus fetch hf:OWNER/NAME --split validation
      smollm-corpus fetch fineweb-edu-dedup --format bin --dask tcp://10.0.0.5:8786
    Interrupted? Run the same command again: it resumes where it stopped.
    """
    if all_subsets == bool(names):
        raise click.UsageError("name one or more subsets, or --all (not both)")
    _dask_option(options, dask_scheduler_file)
    _log_to_stderr(logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if all_configs:
            names = [n for name in names for n in configs_of(name, source_repo, options["revision"])]
        for name in names:
            get_subset(name)
    except SmollmCorpusError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    names = list(names or SUBSETS)
    dedup = options.pop("dedup")
    if dedup:  # one run over every name: duplicates are sought across them
        from .dedup import fetch_all

        runs = [(", ".join(names), lambda report: fetch_all(names, out_dir, dedup=True, source_repo=source_repo,
                                                            format=format_, progress=report, **options))]
    else:
        runs = [(name, lambda report, name=name: [fetch(name, out_dir, source_repo=source_repo, format=format_,
                                                        progress=report, **options)]) for name in names]
    for name, run_one in runs:
        results = _reported(name, run_one, quiet, verbose)
        if not quiet:
            for result in results:
                click.echo(_summary(result), err=True)


def _dask_option(options: dict, scheduler_file: str | None) -> None:
    if scheduler_file is not None:
        if options["dask"] is not None:
            raise click.UsageError("give --dask or --dask-scheduler-file, not both")
        options["dask"] = scheduler_file
    elif options["dask"] is not None and "://" not in options["dask"]:
        options["dask"] = f"tcp://{options['dask']}"  # Dask's default protocol, as dask worker assumes it


def _reported(name: str, run_one, quiet: bool, verbose: bool):
    """``run_one(progress)``, with progress shown, and any failure turned into one paragraph and an exit code."""
    reporter = None if quiet else _EachDataset(_Bar if sys.stderr.isatty() else _LogLines)
    try:
        try:
            return run_one(reporter)
        finally:
            if reporter is not None:
                reporter.close()  # before any message, which must not land on the bar's line
    except KeyboardInterrupt:  # before the run had anything to keep
        click.echo(f"error: interrupted; run the same command again to resume {name}", err=True)
        sys.exit(130)
    except SmollmCorpusError as e:
        if verbose:
            logging.getLogger("smollm_corpus").exception("traceback")
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: still one paragraph
        if verbose:
            logging.getLogger("smollm_corpus").exception("traceback")
        click.echo(f"error: {name} failed unexpectedly ({type(e).__name__}: {e}); what was written is kept, "
                   "so rerunning the same command resumes; add -v for the details, and please report it", err=True)
        sys.exit(1)


@main.command("mix")
@click.argument("inputs", nargs=-1, metavar="NAME=WEIGHT...")
@click.option("--preset", type=click.Choice(list(MIX_PRESETS)),
              help="smollm: fineweb-edu-dedup=0.70 cosmopedia-v2=0.15 python-edu=0.08, SmolLM's own weights.")
@click.option("--tokens", type=Count(), help="Budget: N tokens in all (token formats; exact, in the tokenizer's tokens).")
@click.option("--bytes", "bytes_", type=Size(), help="Budget: SIZE of text in all (txt and jsonl).")
@click.option("--documents", type=Count(), help="Budget: N documents in all.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Every draw and order comes from it: the same seed gives the same bytes, on any machine.")
@click.option("--allow-repeat", is_flag=True, help="Draw an input again (in a new order) when its share is more than it holds.")
@click.option("-o", "--out-dir", required=True, type=click.Path(file_okay=False),
              help="The mixture's folder: input.txt, input.jsonl or token files, and manifest.json.")
def mix_command(inputs, preset, out_dir, quiet, verbose, format_, dask_scheduler_file, bytes_, **options) -> None:
    """Write one shuffled, interleaved mixture of datasets, each its weight of a budget.

    Each input is a name fetch accepts with its weight (normalised); documents are drawn from
    row groups across the whole dataset, and the output interleaves the inputs at their
    weights in every stretch. Every fetch option of text, tokens, filters and python-edu applies;
    --where "NAME: EXPR" filters the input NAME only.

    \b
    Examples:
      smollm-corpus mix fineweb-edu-dedup=0.70 cosmopedia-v2=0.15 python-edu=0.08 --tokens 10B --format bin -o smollm-10B
      smollm-corpus mix --preset smollm --tokens 1B --format nanogpt -o mix1b
      smollm-corpus mix fineweb-edu-dedup=87 cosmopedia-v2=13 --documents 1000000 --format jsonl --seed 7 -o mix
    Interrupted? Run the same command again: it resumes where it stopped.
    """
    from .mixture import mix, parse_inputs

    _dask_option(options, dask_scheduler_file)
    _log_to_stderr(logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        pairs = parse_inputs(inputs, preset)
        for name, _ in pairs:
            get_subset(name)
    except SmollmCorpusError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    result = _reported("the mix", lambda report: mix(pairs, out_dir, format=format_, bytes=bytes_, progress=report,
                                                     **options), quiet, verbose)
    if not quiet:
        where = f"{result.tokens:,} tokens" if result.tokens is not None else _human(result.stats.bytes)
        state = "already complete" if result.already_complete else f"wrote {result.stats.documents:,} documents, {where}"
        click.echo(f"mix: {state} in {result.output}", err=True)
        for i in result.inputs:
            click.echo(f"  {i['name']}: {i['documents']:,} documents, share {i['realised_share']:.4f} "
                       f"(asked {i['intended_share']:.4f})", err=True)


#: fetch's options that apply to each input of a mix
_MIX_SHARED = ("source_repo", "revision", "split", "num_proc", "template", "separator", "format_", "tokenizer", "eot",
               "val_tokens", "shard_tokens", "where", "decontaminate", "benchmarks", "decontam_ngram",
               "decontam_threshold", "dedup", "overwrite", "bucket", "s3_endpoint_url", "region", "no_sign_request", "s3_client",
               "workers", "dask", "dask_scheduler_file", "dask_wait", "quiet", "verbose")
mix_command.params.extend(p for p in fetch_command.params if p.name in _MIX_SHARED)


def run() -> None:
    """The console script: :func:`main`, then an exit that skips tearing the interpreter down.

    By then the output is durable and renamed, and every worker has stopped; what is left is
    freeing the modules ``datasets`` imports (pandas among them), 0.15 s of every run.
    """
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    if code:
        # A failure's traceback holds the worker pool in reference cycles: free it, so that multiprocessing
        # releases the pool's semaphores rather than report them as leaked after our message.
        gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _log_to_stderr(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("smollm_corpus")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class _EachDataset:
    """Progress of several passes (--dedup signs, then writes, each dataset): a fresh reporter for each."""

    def __init__(self, kind) -> None:
        self.kind, self.current, self.subset = kind, None, None

    def __call__(self, p: Progress) -> None:
        if p.subset != self.subset:
            self.close()
            self.current, self.subset = self.kind(), p.subset
        self.current(p)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


class _Bar:
    """One tqdm bar per subset on a terminal: rows, bytes written, skipped, rate and ETA."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if self.bar is None:
            unit = " blobs" if p.hydrated else " docs"
            self.bar = tqdm(total=p.total_rows, initial=p.rows, desc=p.subset, unit=unit, unit_scale=True,
                            dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
        postfix = {"written": _human(p.bytes) if p.tokens is None else f"{_count(p.tokens)} tokens"}
        if p.skipped:
            postfix.update({reason: f"{n:,}" for reason, n in sorted(p.skipped.items())})
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(max(p.rows - self.bar.n, 0))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: seconds between progress lines where stderr is a log file rather than a terminal
LOG_EVERY_SECONDS = 30.0


class _LogLines:
    """Progress for logs (nohup, Slurm, CI, ``2> file``): a plain line when the fetch starts, then every
    LOG_EVERY_SECONDS; never a carriage return."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.first_rows = 0
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started, self.first_rows, self.last = now, p.rows, now
            click.echo(f"{p.subset}: {'resuming' if p.rows else 'starting'} at {_rows(p.rows, p.total_rows)}", err=True)
            return
        if now - self.last < LOG_EVERY_SECONDS:
            return
        self.last = now
        rate = (p.rows - self.first_rows) / max(now - self.started, 1e-9)
        left = None if p.total_rows is None or not rate else (p.total_rows - p.rows) / rate
        skipped = "; skipped: " + ", ".join(f"{n:,} {r}" for r, n in sorted(p.skipped.items())) if p.skipped else ""
        written = _human(p.bytes) if p.tokens is None else f"{p.tokens:,} tokens"
        click.echo(f"{p.subset}: {_rows(p.rows, p.total_rows)}, {p.documents:,} documents, {written} written, "
                   f"{rate:,.0f} rows/s, ETA {_duration(left)}{skipped}", err=True)

    def close(self) -> None:
        pass


def _rows(rows: int, total: int | None) -> str:
    if total is None:
        return f"{rows:,} rows"
    return f"{rows:,}/{total:,} rows ({100 * rows / max(total, 1):.1f}%)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _summary(r: FetchResult) -> str:
    if r.already_complete:
        return f"{r.subset}: already complete in {r.output} ({r.stats.documents:,} documents); nothing to do"
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in sorted(r.stats.skipped.items())) or "none"
    if r.tokens is not None:
        rate = f"{_count(r.tokens / max(r.seconds, 1e-9))} tokens/s"
        written = f"{r.tokens:,} tokens"
    else:
        rate, written = f"{_human(r.stats.bytes / max(r.seconds, 1e-9))}/s", _human(r.stats.bytes)
    return (f"{r.subset}: wrote {r.stats.documents:,} documents, {written} to {r.output} "
            f"in {r.seconds:,.1f} s ({rate}); rows read {r.stats.rows:,}; skipped: {skipped}")


def _count(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if n < 1000 or unit == "B":
            return f"{n:,.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return ""


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


if __name__ == "__main__":  # pragma: no cover
    run()
