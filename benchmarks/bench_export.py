"""Benchmark: turning a text subset of the SmolLM-Corpus into input.txt, four ways, on the same files.

(a) the nanoGPT-family script: pandas reads each parquet file whole, writes it out as one JSON
    file, ``json.load``s that file whole and appends prefixed, stripped items to input.txt;
(b) the published ``datasets.load_dataset(DIR, SUBSET, split="train", num_proc=N)``, then the
    text column written out joined by blank lines;
(c) ``smollm-corpus fetch`` with default options, with ``--num-proc 1``, and ``--limit 1`` for
    its start-up time;
(d) the floor: pyarrow reads only the text column and writes its bytes with no per-row work.

Each run is a fresh subprocess whose caches and temp dirs point into an empty scratch folder;
wall time, CPU, peak memory of the whole process tree and peak disk of the scratch folder are
measured from outside. Files are read from the page cache after the first run (24 GB of RAM
holds them), so the numbers compare CPU and memory, not the disk.

    .venv/bin/python benchmarks/bench_export.py                  # full size: 2 files of 160 MB
    .venv/bin/python benchmarks/bench_export.py --file-mb 20 --runs 1 --only a,d
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, Measurement  # noqa: E402

SUBSETS = ("fineweb-edu-dedup", "cosmopedia-v2")
#: columns and prefixes the nanoGPT-family get_dataset.sh emits per subset
RECIPE_KEYS = {
    "fineweb-edu-dedup": (("text", "#T:\n"),),
    "cosmopedia-v2": (("prompt", "#U:\n"), ("text", "#B:\n")),
}
#: rows per row group: the `datasets` writer default (1,000) when the corpus was pushed
ROW_GROUP_ROWS = 1000
#: mean characters of `text` per row: published tokens / rows (220B GPT-2 tokens / 190M rows;
#: 28B Mistral tokens / 39M rows) times ~4.4 characters per token
MEAN_TEXT_CHARS = {"fineweb-edu-dedup": 5000, "cosmopedia-v2": 3200}
RUN_TIMEOUT_S = 3600


# ---------------------------------------------------------------------------------------------
# the mirror: realistic rows, written once and reused


_DUMPS = ("CC-MAIN-2013-20", "CC-MAIN-2017-47", "CC-MAIN-2019-35", "CC-MAIN-2021-43", "CC-MAIN-2024-10")
_AUDIENCES = ("college_students", "grade_school_students", "young_children", "general", "researchers")
_FORMATS = ("textbook", "blogpost", "wikihow", "story_children", "story_morality", "textbook_academic_tone")
_SEEDS = ("web_samples_v2", "auto_math_text", "khanacademy", "stanford", "wikihow", "openstax", "stories")


class TextRows:
    """``rows`` callable for ``build_mirror``: deterministic, unique, realistic documents."""

    def __init__(self, pool: common.TextPool) -> None:
        self.pool = pool
        self.words = pool.words()

    def __call__(self, subset: str, start: int, stop: int):  # -> pa.Table
        import pyarrow as pa
        from mirror import SCHEMAS

        rng = random.Random(f"{subset}:{start}:{stop}")
        make = self._fineweb if subset == "fineweb-edu-dedup" else self._cosmopedia
        rows = [make(rng) for _ in range(start, stop)]
        return pa.Table.from_pylist(rows, schema=SCHEMAS[subset])

    def _fineweb(self, rng: random.Random) -> dict:
        import datetime as dt

        text = self.pool.document(rng, MEAN_TEXT_CHARS["fineweb-edu-dedup"])
        dump = rng.choice(_DUMPS)
        score = rng.uniform(2.5, 5.0)
        path = "/".join(rng.choices(self.words, k=rng.randint(1, 3)))
        return {
            "text": text,
            "id": f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>",
            "metadata": {
                "dump": dump,
                "url": f"https://www.{rng.choice(self.words)}{rng.choice(self.words)}.org/{path}.html",
                "date": dt.datetime(2013, 1, 1) + dt.timedelta(seconds=rng.randrange(11 * 365 * 86400)),
                "file_path": (
                    f"s3://commoncrawl/crawl-data/{dump}/segments/{rng.randrange(10**13)}.{rng.randrange(100)}"
                    f"/warc/{dump}-{rng.randrange(10**14)}-{rng.randrange(10**5):05d}.warc.gz"
                ),
                "language": "en",
                "language_score": rng.uniform(0.65, 1.0),
                "token_count": int(len(text) / 4.4),
                "score": score,
                "int_score": round(score),
            },
        }

    def _cosmopedia(self, rng: random.Random) -> dict:
        audience, fmt = rng.choice(_AUDIENCES), rng.choice(_FORMATS)
        extract = self.pool.document(rng, 1100)
        topic = " ".join(rng.choices(self.words, k=rng.randint(2, 4))).title()
        prompt = (
            f'Here is an extract from a webpage: "{extract}".\n\n'
            f"Write an extensive and detailed {fmt.replace('_', ' ')} unit suitable for {audience.replace('_', ' ')}, "
            f'related to the given extract, within the context of "{topic}". Do not just list concepts, '
            "but develop each one in detail before moving to the next, as we prioritize depth of "
            "understanding and comprehensive exploration of the subject matter over breadth."
        )
        body = self.pool.document(rng, MEAN_TEXT_CHARS["cosmopedia-v2"]).split("\n")
        for i in range(0, len(body), 3):  # markdown section headings, as cosmopedia textbooks have
            body[i] = f"## {i // 3 + 1}. {' '.join(rng.choices(self.words, k=3)).title()}\n\n{body[i]}"
        text = f"# {topic}\n\n" + "\n\n".join(body)
        return {
            "prompt": prompt,
            "text": text,
            "token_length": int(len(text) / 4.4),
            "audience": audience,
            "format": fmt,
            "seed_data": rng.choice(_SEEDS),
        }


def rows_per_file(rows: TextRows, subset: str, file_mb: float) -> int:
    """Rows that make a parquet file of about ``file_mb`` MB, from a written probe."""
    import io

    import pyarrow.parquet as pq

    probe = rows(subset, 0, 3 * ROW_GROUP_ROWS)
    buffer = io.BytesIO()
    pq.write_table(probe, buffer, row_group_size=ROW_GROUP_ROWS)
    return max(1, round(file_mb * MB / (buffer.tell() / probe.num_rows)))


def ensure_mirror(work: Path, subset: str, files: int, file_mb: float, rows: TextRows) -> Path:
    """A mirror with ``files`` parquet files of ~``file_mb`` MB each, built once under ``work``."""
    from mirror import build_mirror

    root = work / "mirrors" / f"{subset}-{files}x{file_mb:g}mb"
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    per_file = rows_per_file(rows, subset, file_mb)
    print(f"building {root} ({files} x {per_file:,} rows) ...", file=sys.stderr, flush=True)
    build_mirror(root, {subset: [per_file] * files}, row_group_size=ROW_GROUP_ROWS, rows=rows)
    done.write_text("")  # written last: a half-built mirror is rebuilt next time
    print(f"built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return root


def describe_mirror(root: Path, subset: str) -> str:
    import pyarrow.parquet as pq

    parts = []
    for path in sorted((root / subset).glob("train-*.parquet")):
        meta = pq.ParquetFile(path).metadata
        parts.append(
            f"{path.name}: {path.stat().st_size / MB:.0f} MB snappy, {meta.num_rows:,} rows, "
            f"{meta.num_row_groups} row groups ({meta.row_group(0).total_byte_size / MB:.1f} MB uncompressed each)"
        )
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# the approaches; each runs in a fresh interpreter via common.python_call


def _parquet_files(source: str, subset: str) -> list[Path]:
    return sorted((Path(source) / subset).glob("train-*.parquet"))


def run_pandas_json(source: str, subset: str, out: str, scratch: str) -> None:
    """(a) nanoGPT-family get_parquet_dataset.py: parquet -> JSON file -> json.load -> input.txt."""
    json_dir = Path(scratch) / "json_output"  # the script keeps these beside its downloads
    json_dir.mkdir(parents=True, exist_ok=True)
    output = Path(out) / "input.txt"
    open(output, "w").close()
    for parquet_path in _parquet_files(source, subset):
        json_path = json_dir / parquet_path.name.replace(".parquet", ".json")
        _convert_to_json(parquet_path, json_path)
        _emit_json_contents(json_path, output, RECIPE_KEYS[subset])


def _convert_to_json(parquet_path: Path, json_path: Path) -> None:
    import pandas as pd

    if not json_path.exists():
        df = pd.read_parquet(parquet_path)
        df.to_json(json_path, orient="records")


def _emit_json_contents(json_path: Path, output: Path, keys: tuple[tuple[str, str], ...]) -> None:
    import json

    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    with open(output, "a", encoding="utf-8") as f:
        prev_item_written = False
        for item in data:
            content_written = False
            for key, prefix in keys:
                if key in item:
                    if prev_item_written or content_written:
                        f.write("\n")  # one newline between items
                    f.write((prefix + item[key]).strip())
                    prev_item_written = content_written = True


def run_datasets(source: str, subset: str, out: str, num_proc: int) -> None:
    """(b) the published load_dataset (Arrow cache built first), then the text column written out."""
    from datasets import load_dataset

    ds = load_dataset(source, subset, split="train", num_proc=num_proc)
    with open(Path(out) / "input.txt", "w", encoding="utf-8") as f:
        first = True
        for batch in ds.select_columns(["text"]).iter(batch_size=1000):
            if not first:
                f.write("\n\n")
            f.write("\n\n".join(batch["text"]))
            first = False


def run_arrow_floor(source: str, subset: str, out: str) -> None:
    """(d) read only the text column and write each batch's string data buffer as it is."""
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(Path(out) / "input.txt", "wb") as f:
        for path in _parquet_files(source, subset):
            # batches of one row group: measured fastest here; whole-file batches churn 1 GB of memory
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS, columns=["text"]):
                column = batch.column(0)
                _, offsets, data = column.buffers()
                width = 8 if pa.types.is_large_string(column.type) else 4
                fmt = "<q" if width == 8 else "<i"
                (start,) = struct.unpack_from(fmt, offsets, width * column.offset)
                (stop,) = struct.unpack_from(fmt, offsets, width * (column.offset + len(column)))
                f.write(memoryview(data)[start:stop])


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class Approach:
    key: str
    label: str
    command: Callable[[Path, Path, Path], list[str]]  # (mirror, out, scratch) -> argv
    startup_of: str | None = None  # this run measures the start-up of approach `startup_of`


@dataclass
class Result:
    approach: Approach
    runs: list[tuple[Measurement, int, int]] = field(default_factory=list)  # (m, output bytes, .arrow files)

    @property
    def error(self) -> str | None:
        failed = [m for m, _, _ in self.runs if not m.ok]
        return failed[0].error() if failed else None

    def med(self, attr: str) -> float | None:
        if self.error or not self.runs:
            return None
        return common.median(getattr(m, attr) for m, _, _ in self.runs)

    @property
    def out_mb(self) -> float | None:
        return None if self.error or not self.runs else common.median(b for _, b, _ in self.runs) / MB

    @property
    def mbps(self) -> float | None:
        wall, out = self.med("wall_s"), self.out_mb
        return out / wall if wall and out is not None else None

    @property
    def arrow_files(self) -> int:
        return max((n for _, _, n in self.runs), default=0)


def approaches(subset: str, only: set[str]) -> list[Approach]:
    cli = common.cli_path()
    num_proc = os.cpu_count() or 1

    def tool(*extra: str) -> Callable[[Path, Path, Path], list[str]]:
        def argv(mirror: Path, out: Path, scratch: Path) -> list[str]:
            return [str(cli or "smollm-corpus"), "fetch", subset, "--source", str(mirror), "-o", str(out), "-q", *extra]

        return argv

    every = [
        Approach("a", "(a) pandas -> JSON -> json.load", lambda m, o, s: common.python_call(
            "bench_export", "run_pandas_json", source=str(m), subset=subset, out=str(o), scratch=str(s))),
        Approach("b", f"(b) datasets load_dataset num_proc={num_proc}", lambda m, o, s: common.python_call(
            "bench_export", "run_datasets", source=str(m), subset=subset, out=str(o), num_proc=num_proc)),
        Approach("c", "(c) smollm-corpus fetch", tool()),
        Approach("c1", "(c) smollm-corpus fetch --num-proc 1", tool("--num-proc", "1")),
        Approach("c0", "(c) start-up: --limit 1", tool("--limit", "1"), startup_of="c"),
        Approach("c10", "(c) start-up: --limit 1 --num-proc 1", tool("--limit", "1", "--num-proc", "1"), startup_of="c1"),
        Approach("d", "(d) pyarrow text column, raw buffers", lambda m, o, s: common.python_call(
            "bench_export", "run_arrow_floor", source=str(m), subset=subset, out=str(o))),
    ]
    return [a for a in every if a.key[0] in only]


def measure(approach: Approach, mirror: Path, work: Path, tag: str) -> tuple[Measurement, int, int]:
    """One fresh-process run; scratch (caches, temp) and output are deleted afterwards, the log kept."""
    run_dir = work / "runs" / f"{approach.key}-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out, scratch = run_dir / "out", run_dir / "scratch"
    out.mkdir(parents=True)
    env = common.base_env(scratch)
    m = common.run_measured(
        approach.command(mirror, out, scratch), env=env, log=run_dir / "log.txt", watch=[scratch], timeout_s=RUN_TIMEOUT_S
    )
    produced = common.output_size(out)
    arrow = len(common.find_files(scratch, ".arrow")) + len(common.find_files(out, ".arrow"))
    shutil.rmtree(out)
    shutil.rmtree(scratch)
    status = "ok" if m.ok else m.error()
    print(
        f"  {approach.label} [{tag}]: {m.wall_s:.1f} s, {produced / MB:.0f} MB out, RSS {m.peak_rss_mb:.0f} MB, "
        f"disk {m.peak_disk_mb:.0f} MB; {status}",
        file=sys.stderr,
        flush=True,
    )
    return m, produced, arrow


def report(results: dict[str, Result], startup: dict[str, float]) -> list[list[str]]:
    """Table rows; throughput cells of the start-up rows are dashes, ratios are to (c) default."""
    ref = results.get("c")
    ref = ref if ref and not ref.error else None
    rows = []
    for key, r in results.items():
        if r.error:
            rows.append([r.approach.label, f"error: {r.error}"] + ["—"] * (len(HEADERS) - 2))
            continue
        rss, disk = r.med("peak_rss_mb"), r.med("peak_disk_mb")
        net = r.out_mb / max(1e-9, r.med("wall_s") - startup[key]) if key in startup else None
        throughput = [
            common.num(r.mbps), common.num(net), common.ratio(r.mbps, ref and ref.mbps),
            common.num(rss, 0), common.ratio(rss, ref and ref.med("peak_rss_mb")),
            common.num(r.med("peak_pss_mb"), 0), common.num(disk, 0), common.ratio(disk, ref and ref.med("peak_disk_mb")),
        ]
        if r.approach.startup_of:  # only its time and memory mean something
            throughput = ["—", "—", "—", throughput[3], "—", throughput[5], throughput[6], "—"]
        rows.append([
            r.approach.label, *throughput, common.num(r.med("final_disk_mb"), 0),
            common.num(r.med("wall_s"), 2), common.num(r.med("cpu_s")), common.num(r.out_mb, 0),
        ])
    return rows


HEADERS = [
    "approach", "MB/s", "MB/s net of start-up", "MB/s vs (c)", "peak RSS MB", "RSS vs (c)", "peak PSS MB",
    "extra disk MB (peak)", "disk vs (c)", "left on disk MB", "wall s", "CPU s", "output MB",
]


def targets(results: dict[str, Result], startup: dict[str, float]) -> list[str]:
    def ok(key: str) -> Result | None:
        r = results.get(key)
        return r if r and r.runs and not r.error else None

    a, c, c1, d = ok("a"), ok("c"), ok("c1"), ok("d")
    lines = []
    if a and c:
        lines.append(common.check("(c) default >= 3x (a) MB/s", c.mbps >= 3 * a.mbps,
                                  f"{c.mbps:.1f} vs 3 x {a.mbps:.1f} = {3 * a.mbps:.1f} MB/s"))
    else:
        lines.append(common.check("(c) default >= 3x (a) MB/s", None, "needs (a) and (c)"))
    if c1 and d and "c1" in startup:
        net = c1.out_mb / max(1e-9, c1.med("wall_s") - startup["c1"])
        lines.append(common.check("(c) --num-proc 1 net of start-up >= 0.6x (d) MB/s", net >= 0.6 * d.mbps,
                                  f"{net:.1f} vs 0.6 x {d.mbps:.1f} = {0.6 * d.mbps:.1f} MB/s"))
    else:
        lines.append(common.check("(c) --num-proc 1 net of start-up >= 0.6x (d) MB/s", None, "needs (c) and (d)"))
    if a and c:
        rss_c, rss_a = c.med("peak_rss_mb"), a.med("peak_rss_mb")
        lines.append(common.check("(c) peak RSS <= 1/4 of (a) and < 1 GB", rss_c <= rss_a / 4 and rss_c < 1000,
                                  f"{rss_c:.0f} MB vs (a) {rss_a:.0f} MB / 4 = {rss_a / 4:.0f} MB"))
    else:
        lines.append(common.check("(c) peak RSS <= 1/4 of (a) and < 1 GB", None, "needs (a) and (c)"))
    if c:
        left = max(m.final_disk_mb for m, _, _ in c.runs)
        lines.append(common.check("(c) leaves no Arrow cache", c.arrow_files == 0 and left < 1,
                                  f"{c.arrow_files} .arrow files, {left:.1f} MB left in its cache and temp dirs"))
    else:
        lines.append(common.check("(c) leaves no Arrow cache", None, "needs (c)"))
    return lines


def memory_scaling(big: Result, small_mirror: Path, work: Path, runs: int, small_mb: float, big_mb: float) -> str:
    """Run (c) default on the quarter-size mirror and compare its peak RSS with the full-size one."""
    if big.med("peak_rss_mb") is None:
        return "memory scaling of (c): skipped, (c) failed on the full-size mirror\n"
    small = Result(big.approach)
    for run in range(runs):
        small.runs.append(measure(small.approach, small_mirror, work, f"small-r{run}"))
    small_rss, big_rss = small.med("peak_rss_mb"), big.med("peak_rss_mb")
    if small_rss is None:
        return f"memory scaling of (c): failed on the small mirror: {small.error}\n"
    return (
        f"memory scaling of (c): input {small_mb:g} MB -> peak RSS {small_rss:.0f} MB; "
        f"input {big_mb:g} MB (4x) -> peak RSS {big_rss:.0f} MB ({big_rss / small_rss:.2f}x)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--subset", choices=SUBSETS, default="fineweb-edu-dedup", help="text subset to measure")
    parser.add_argument("--runs", type=int, default=3, help="runs per approach; the table shows medians")
    parser.add_argument("--file-mb", type=float, default=160, help="size of each parquet file, MB")
    parser.add_argument("--files", type=int, default=2, help="parquet files in the measured subset")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="mirrors and runs live here")
    parser.add_argument("--only", default="a,b,c,d", help="comma-separated approaches to run, from a,b,c,d")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= set("abcd") or args.runs < 1 or args.files < 1 or args.file_mb <= 0:
        parser.error("--only takes letters from a,b,c,d; --runs, --files and --file-mb must be positive")
    common.install_cleanup()
    sys.path.insert(0, str(common.REPO / "tests"))  # for mirror.build_mirror

    work = args.work.resolve()
    pool = common.text_pool()
    rows = TextRows(pool)
    mirror = ensure_mirror(work, args.subset, args.files, args.file_mb, rows)
    small_mb = args.file_mb * args.files / 4
    small = ensure_mirror(work, args.subset, 1, small_mb, rows) if "c" in only else None

    print(f"# bench_export: {args.subset} to input.txt\n")
    print(common.machine_summary())
    print(f"- text: {pool.source}; mirror: {describe_mirror(mirror, args.subset)}")
    print(f"- medians of {args.runs} run(s); each run a fresh process tree with empty cache and temp dirs\n")

    results = {a.key: Result(a) for a in approaches(args.subset, only)}
    if "c" in only and common.cli_path() is None:
        print("smollm-corpus is not installed: its rows will show the error", file=sys.stderr)
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
        for key, result in results.items():
            result.runs.append(measure(result.approach, mirror, work, f"r{run}"))

    startup = {r.approach.startup_of: r.med("wall_s") for r in results.values()
               if r.approach.startup_of and r.med("wall_s") is not None}
    print(common.markdown_table(HEADERS, report(results, startup)))
    print(
        "\nMB/s: output bytes / wall seconds. Net of start-up: output / (wall - wall of the same options "
        "with --limit 1). Peak RSS/PSS: summed over the whole process tree, sampled every 50 ms. Extra "
        "disk: peak of the run's HF_HOME, HF_DATASETS_CACHE, TMPDIR and (a)'s JSON folder; output excluded.\n"
    )
    if len(RECIPE_KEYS[args.subset]) > 1:
        print("(a) writes prompt and text, the others text only: compare its wall time, not its MB/s.\n")

    if small is not None:
        print(memory_scaling(results["c"], small, work, args.runs, small_mb, args.file_mb * args.files))
    print("\n".join(targets(results, startup)))


if __name__ == "__main__":
    main()
