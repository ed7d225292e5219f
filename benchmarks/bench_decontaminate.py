"""Benchmark: benchmark decontamination, the Cosmopedia recipe vs smollm_corpus.decontaminate.

Data, built once under --work: --samples benchmark samples of 1 to 3 sentences, and --mb MB of
documents of shuffled sentences with the real length spread, from two halves of the sentences
of --sample (a fineweb-edu jsonl; generated English-like text without it). Document sentences
sharing a 10-gram with a benchmark sentence are left out, so the documents are clean; a second
copy has --contaminated percent of them with a benchmark sample put in, verbatim or with 30% or
70% of its words replaced.

(a) the recipe (decontamination/decontaminate.py of huggingface/cosmopedia), reproduced on one
    core: per document, normalise, the set of its 10-grams, the first one (in set order) found in
    the benchmarks' n-gram dict (a later sample overwrites an earlier one's n-grams), then the diff
    ratio against that sample;
(b) ``Decontaminator.check`` on one core, batches of 1,000 documents;
(c) the same on all cores: a spawn process pool, the Decontaminator pickled once per worker,
    each worker reading the documents itself (as the pipeline's workers read their parquet);
(d) ``smollm-corpus fetch`` of the contaminated documents (as a fineweb-edu-dedup mirror), with
    and without ``--decontaminate --benchmarks <the same samples>``, whole runs.

Each approach runs in a fresh interpreter; the benchmarks are indexed first, timed apart, and
the documents are timed alone (for (c): after every worker has started and built its index).

    .venv/bin/python benchmarks/bench_decontaminate.py
    .venv/bin/python benchmarks/bench_decontaminate.py --mb 10 --samples 2000
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import re
import sys
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TASKS = ("mmlu", "hellaswag", "piqa", "siqa", "winogrande", "openbookqa", "arc_easy", "arc_challenge")
KINDS = ("verbatim", "30% of words replaced", "70% of words replaced")
BATCH = 1000
NGRAM, THRESHOLD = 10, 0.5


# ---------------------------------------------------------------------------------------------
# the recipe, reproduced (one core)


def recipe_words(text: str) -> list[str]:
    """The recipe's normalisation, step by step as it does it: NFD, each character's category, lowercase, \\w+."""
    decomposed = unicodedata.normalize("NFD", text)
    kept = "".join(char for char in decomposed if unicodedata.category(char) != "Mn")
    return re.findall(r"\w+", kept.lower())


def recipe_ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(words[i:] for i in range(n))))


def recipe_index(texts: list[str], tasks: list[str], n: int) -> tuple[dict, list[str], list[int]]:
    """n-gram -> position among the kept samples (the last sample holding it wins); each kept sample's task and row."""
    index: dict[tuple[str, ...], int] = {}
    kept_tasks, kept_rows = [], []
    for row, (text, task) in enumerate(zip(texts, tasks)):
        grams = recipe_ngrams(recipe_words(text), n)
        if grams:  # samples without an n-gram are left out, and do not take a position
            index.update(dict.fromkeys(grams, len(kept_rows)))
            kept_tasks.append(task)
            kept_rows.append(row)
    return index, kept_tasks, kept_rows


def recipe_retrieve(text: str, index: dict, n: int) -> tuple[tuple[str, ...], int] | None:
    """The first n-gram of the document, in set order, that the benchmarks hold, and its sample."""
    for gram in recipe_ngrams(recipe_words(text), n):
        if gram in index:
            return gram, index[gram]
    return None


def recipe_ratio(document: str, sample: str) -> float:
    """The recipe's match statistics: blocks of SequenceMatcher over the normalised texts, as its diff computes them."""
    a, b = " ".join(recipe_words(document)), " ".join(recipe_words(sample))
    blocks = difflib.SequenceMatcher(None, a.lower(), b.lower(), autojunk=False).get_matching_blocks()
    parts = [a[i : i + size] for i, _, size in blocks if size > 5]
    match = " ".join("".join(parts).split())
    return len(match) / len(b) if b else 0


def recipe_drops(documents: list[str], texts: list[str], tasks: list[str], n: int = NGRAM,
                 threshold: float = THRESHOLD) -> dict[int, int]:
    """Document -> benchmark row, for the documents the recipe drops."""
    index, _, rows = recipe_index(texts, tasks, n)
    drops = {}
    for doc, text in enumerate(documents):
        found = recipe_retrieve(text, index, n)
        if found is not None and recipe_ratio(text, texts[rows[found[1]]]) > threshold:
            drops[doc] = rows[found[1]]
    return drops


# ---------------------------------------------------------------------------------------------
# data


def sentences(sample: Path | None) -> tuple[list[str], list[int], str]:
    """Sentences and document lengths of ``sample`` (generated text when None)."""
    if sample is None:
        pool = common.text_pool()
        return list(pool.sentences), list(pool.doc_lengths), pool.source
    docs = [json.loads(line)["text"] for line in sample.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = [s.strip() for doc in docs for para in doc.split("\n") for s in re.split(r"(?<=[.!?])\s+", para)]
    return sorted({s for s in found if len(s) > 1}), [len(d) for d in docs], f"{sample.name} ({len(docs)} docs)"


def build(work: Path, sample: Path | None, samples: int, mb: float, contaminated: float) -> Path:
    """Write benchmarks.parquet, clean.parquet, contaminated.parquet and contaminated.json under ``work``, once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smollm_corpus.decontaminate import normalize

    folder = work / f"decontaminate-{samples}-{mb:g}mb-{contaminated:g}pct-{sample.stem if sample else 'generated'}"
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    found, lengths, source = sentences(sample)
    rng = random.Random(0)
    rng.shuffle(found)
    bench_sentences, doc_sentences = found[: len(found) // 2], found[len(found) // 2 :]
    bench_grams = {g for s in bench_sentences for g in recipe_ngrams(normalize(s), NGRAM)}
    doc_sentences = [s for s in doc_sentences if not recipe_ngrams(normalize(s), NGRAM) & bench_grams]
    texts = [" ".join(rng.choices(bench_sentences, k=rng.randint(1, 3))) for _ in range(samples)]
    tasks = [TASKS[i % len(TASKS)] for i in range(samples)]
    pq.write_table(pa.table({"text": texts, "task_name": tasks}), folder / "benchmarks.parquet")

    pool = common.TextPool(tuple(doc_sentences), tuple(lengths), source)
    documents, size = [], 0
    while size < mb * common.MB:
        documents.append(pool.document(rng, pool.mean_length))
        size += len(documents[-1].encode())
    pq.write_table(pa.table({"text": documents}), folder / "clean.parquet")

    vocabulary = pool.words()
    planted = {}
    for number, doc in enumerate(rng.sample(range(len(documents)), round(len(documents) * contaminated / 100))):
        kind, row = number % len(KINDS), rng.randrange(samples)
        words = texts[row].split()
        for i in rng.sample(range(len(words)), round(len(words) * (0, 0.3, 0.7)[kind])):
            words[i] = rng.choice(vocabulary)
        paragraphs = documents[doc].split("\n")
        paragraphs.insert(rng.randrange(len(paragraphs) + 1), " ".join(words))
        documents[doc] = "\n".join(paragraphs)
        planted[doc] = {"kind": KINDS[kind], "sample": row}
    pq.write_table(pa.table({"text": documents}), folder / "contaminated.parquet")
    (folder / "contaminated.json").write_text(json.dumps(planted))
    (folder / "source.txt").write_text(source)
    (folder / ".complete").write_text("")
    return folder


# ---------------------------------------------------------------------------------------------
# the approaches; each runs in a fresh interpreter via common.python_call


def _documents(folder: str, name: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(folder) / f"{name}.parquet").column("text").to_pylist()


def run_recipe(folder: str, name: str, out: str) -> None:
    """(a) the recipe on one core."""
    import pyarrow.parquet as pq

    bench = pq.read_table(Path(folder) / "benchmarks.parquet").to_pydict()
    documents = _documents(folder, name)
    started = time.perf_counter()
    index, _, rows = recipe_index(bench["text"], bench["task_name"], NGRAM)
    indexed, cpu = time.perf_counter(), time.process_time()
    drops, candidates = {}, 0
    for doc, text in enumerate(documents):
        found = recipe_retrieve(text, index, NGRAM)
        if found is not None:
            candidates += 1
            if recipe_ratio(text, bench["text"][rows[found[1]]]) > THRESHOLD:
                drops[doc] = rows[found[1]]
    _report(out, documents, drops, indexed - started, time.perf_counter() - indexed, time.process_time() - cpu,
            candidates=candidates)


def _check(first: int) -> tuple[dict[int, int], float]:
    """In a worker: check the batch of documents from ``first`` on; its drops and the CPU it took."""
    started = time.process_time()
    found = _worker.check(_texts[first : first + BATCH])
    return {first + i: r.sample for i, r in enumerate(found) if r is not None}, time.process_time() - started


def _start_worker(decontaminator, folder: str, name: str) -> None:
    global _worker, _texts
    _worker, _texts = decontaminator, _documents(folder, name)  # each worker reads the documents itself
    _worker.check([])  # builds the index


def _started(_: int) -> None:
    time.sleep(0.5)  # long enough that every worker takes one: all have started and built their index


def run_ours(folder: str, name: str, out: str, processes: int) -> None:
    """(b) and (c): Decontaminator.check in this process, or in ``processes`` spawned workers."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from smollm_corpus.decontaminate import Decontaminator
    from smollm_corpus.evalsets import load_benchmarks

    documents = _documents(folder, name)
    started = time.perf_counter()
    decontaminator = Decontaminator(load_benchmarks(str(Path(folder) / "benchmarks.parquet")), NGRAM, THRESHOLD)
    if processes == 1:
        decontaminator.check([])  # builds the index
        indexed, cpu = time.perf_counter(), time.process_time()
        drops = {}
        for first in range(0, len(documents), BATCH):
            found = decontaminator.check(documents[first : first + BATCH])
            drops.update({first + i: r.sample for i, r in enumerate(found) if r is not None})
        wall, cpu = time.perf_counter() - indexed, time.process_time() - cpu
    else:
        with ProcessPoolExecutor(processes, multiprocessing.get_context("spawn"), initializer=_start_worker,
                                 initargs=(decontaminator, folder, name)) as pool:
            list(pool.map(_started, range(processes)))
            indexed, cpu = time.perf_counter(), time.process_time()
            done = list(pool.map(_check, range(0, len(documents), BATCH)))
            wall, cpu = time.perf_counter() - indexed, time.process_time() - cpu + sum(c for _, c in done)
        drops = {doc: sample for found, _ in done for doc, sample in found.items()}
    _report(out, documents, drops, indexed - started, wall, cpu)


def _report(out: str, documents: list[str], drops: dict[int, int], index_s: float, wall_s: float, cpu_s: float,
            **extra: int) -> None:
    Path(out).write_text(json.dumps({
        "bytes": sum(len(d.encode()) for d in documents), "index_s": index_s, "wall_s": wall_s, "cpu_s": cpu_s,
        "drops": {str(k): v for k, v in sorted(drops.items())}, **extra,
    }))


# ---------------------------------------------------------------------------------------------
# measuring and reporting

APPROACHES = {
    "a": ("(a) recipe, 1 core", "run_recipe", {}),
    "b": ("(b) Decontaminator, 1 core", "run_ours", {"processes": 1}),
    "c": (f"(c) Decontaminator, {os.cpu_count()} processes", "run_ours", {"processes": os.cpu_count() or 1}),
}
HEADERS = ["approach", "documents", "MB/s", "MB/s per CPU s", "vs (a) per CPU s", "index s", "dropped",
           "peak RSS MB"]


def measure(key: str, folder: Path, name: str, work: Path, tag: str) -> dict:
    label, func, kwargs = APPROACHES[key]
    run = work / "runs" / f"{key}-{name}-{tag}"
    run.mkdir(parents=True, exist_ok=True)
    out = run / "result.json"
    out.unlink(missing_ok=True)
    cmd = common.python_call("bench_decontaminate", func, folder=str(folder), name=name, out=str(out), **kwargs)
    measured = common.run_measured(cmd, env=common.base_env(run / "scratch"), log=run / "log.txt")
    if not measured.ok or not out.exists():
        return {"label": label, "error": measured.error()}
    return {"label": label, "rss_mb": measured.peak_rss_mb, **json.loads(out.read_text())}


def combine(runs: list[dict]) -> dict:
    """Medians of the runs; the documents dropped in any of them (the recipe's vary with the hash seed)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    drops = [r["drops"] for r in runs]
    medians = {k: common.median(r[k] for r in runs) for k in ("wall_s", "cpu_s", "index_s", "rss_mb")}
    counts = sorted({len(d) for d in drops})
    return {**runs[0], **medians, "drops": {k: v for d in drops for k, v in d.items()},
            "counts": f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,} to {counts[-1]:,}"}


def row(result: dict, name: str, reference: dict | None) -> list[object]:
    if "error" in result:
        return [result["label"], name, result["error"], "", "", "", "", ""]
    mb = result["bytes"] / common.MB
    per_cpu = mb / result["cpu_s"] if result["cpu_s"] else None
    ref = reference["bytes"] / common.MB / reference["cpu_s"] if reference and "cpu_s" in reference else None
    return [result["label"], name, common.num(mb / result["wall_s"]), common.num(per_cpu), common.ratio(per_cpu, ref),
            common.num(result["index_s"], 2), result["counts"], common.num(result["rss_mb"], 0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--sample", type=Path, default=common.SAMPLE if common.SAMPLE.exists() else None,
                        help="fineweb-edu jsonl to take sentences from (generated English-like text if absent)")
    parser.add_argument("--samples", type=int, default=10_000, help="benchmark samples")
    parser.add_argument("--mb", type=float, default=60, help="MB of documents")
    parser.add_argument("--contaminated", type=float, default=1.0, help="percent of documents given a benchmark sample")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="data and runs live here")
    parser.add_argument("--only", default="a,b,c,d", help="comma-separated approaches to run, from a,b,c,d")
    parser.add_argument("--runs", type=int, default=3, help="runs per approach; the table shows medians")
    args = parser.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    fetches = "d" in only
    only = [x for x in only if x != "d"]
    if not set(only) <= set(APPROACHES) or min(args.samples, args.runs) < 1 or args.mb <= 0 \
            or not 0 <= args.contaminated <= 100:
        parser.error("--only takes letters from a,b,c,d; --samples, --runs and --mb must be positive, "
                     "--contaminated in [0, 100]")
    if args.sample is not None and not args.sample.is_file():
        parser.error(f"--sample {args.sample} does not exist")
    common.install_cleanup()
    work = args.work.resolve()
    print("building the data (once) ...", file=sys.stderr, flush=True)
    folder = build(work, args.sample, args.samples, args.mb, args.contaminated)

    print("# bench_decontaminate: the Cosmopedia recipe vs smollm_corpus.decontaminate\n")
    print(common.machine_summary())
    print(f"- text: {(folder / 'source.txt').read_text()}; {args.samples:,} benchmark samples; "
          f"{args.mb:g} MB of documents, {args.contaminated:g}% of them contaminated in the second set")
    print(f"- n-gram {NGRAM}, threshold {THRESHOLD}; medians of {args.runs} run(s), a fresh interpreter per run\n")
    runs: dict[tuple[str, str], list[dict]] = {}
    for run in range(args.runs):  # interleaved, so that drift in the machine hits every approach alike
        for name in ("clean", "contaminated"):
            for key in only:
                print(f"run {run + 1}/{args.runs}, {name}: {APPROACHES[key][0]}", file=sys.stderr, flush=True)
                runs.setdefault((key, name), []).append(measure(key, folder, name, work, f"r{run}"))
    results = {k: combine(v) for k, v in runs.items()}
    names = ("clean", "contaminated")
    rows = [row(results[key, name], name, results.get(("a", name))) for name in names for key in only]
    print(common.markdown_table(HEADERS, rows))
    print("\nMB/s: document bytes (UTF-8) / wall seconds of the documents alone. Per CPU s: / CPU seconds of "
          "every process involved. Index: reading and indexing the benchmarks (for (c), with starting the "
          "workers). Dropped: in any run (the recipe's vary with the hash seed). Peak RSS: the whole process tree, "
          "including the documents held in memory (by each worker for (c)).\n")
    print("\n".join(targets(results, only, json.loads((folder / "contaminated.json").read_text()))))
    if fetches:
        print("\n".join(fetch_comparison(folder, work, args.runs)))


def fetch_comparison(folder: Path, work: Path, runs: int) -> list[str]:
    """(d): whole fetches of the contaminated documents, with and without --decontaminate."""
    import pyarrow as pa

    sys.path.insert(0, str(common.REPO / "tests"))
    from mirror import build_mirror, rows_for

    documents = _documents(str(folder), "contaminated")
    mirror = folder / "mirror"
    if not (mirror / ".complete").exists():
        def rows(subset: str, start: int, stop: int) -> pa.Table:
            return rows_for(subset, start, stop).set_column(0, "text", pa.array(documents[start:stop], pa.string()))

        half = len(documents) // 2
        build_mirror(mirror, {"fineweb-edu-dedup": [half, len(documents) - half]}, row_group_size=1000, rows=rows)
        (mirror / ".complete").write_text("")
    variants = {"without": [], "with --decontaminate": ["--decontaminate", "--benchmarks", str(folder / "benchmarks.parquet")]}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    rss: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(runs):
        for name, extra in variants.items():
            out = work / "runs" / f"fetch-{run}-{len(extra)}"
            cmd = [str(common.cli_path()), "fetch", "fineweb-edu-dedup", "--source", str(mirror), "-o", str(out), "-q",
                   "--overwrite", *extra]
            m = common.run_measured(cmd, env=common.base_env(out / "scratch"), log=out.with_suffix(".log"))
            if not m.ok:
                return [f"FAIL  (d) fetch {name}: {m.error()}"]
            walls[name].append(m.wall_s)
            rss[name].append(m.peak_rss_mb)
    mb = sum(len(d.encode()) for d in documents) / common.MB
    plain, cleaned = (common.median(walls[name]) for name in variants)
    lines = [f"(d) fetch of {mb:.0f} MB: without {plain:.2f} s ({mb / plain:.1f} MB/s, peak RSS "
             f"{common.median(rss['without']):.0f} MB), with --decontaminate {cleaned:.2f} s ({mb / cleaned:.1f} MB/s, "
             f"peak RSS {common.median(rss['with --decontaminate']):.0f} MB), start-up and indexing included"]
    lines.append(common.check("(d) a fetch with --decontaminate >= 0.5x the speed of the same fetch without it",
                              plain / cleaned >= 0.5, f"{plain / cleaned:.2f}x"))
    return lines


def targets(results: dict, only: list[str], planted: dict[str, dict]) -> list[str]:
    lines = []
    ok = {k: results.get(k) for k in results if "error" not in results[k]}
    for name in ("clean", "contaminated"):
        a, b, c = (ok.get((k, name)) for k in "abc")
        if a and b:
            speed = (b["bytes"] / b["cpu_s"]) / (a["bytes"] / a["cpu_s"])
            lines.append(common.check(f"(b) >= 10x (a) per CPU second, {name}", speed >= 10, f"{speed:.1f}x"))
            missing = set(a["drops"]) - set(b["drops"])
            detail = f"(a) {len(a['drops'])}, (b) {len(b['drops'])}, missed by (b): {sorted(missing)[:10]}"
            lines.append(common.check(f"(b) drops every document (a) drops in any run, {name}", not missing, detail))
        if b and c:
            lines.append(common.check(f"(c) drops what (b) drops, {name}", b["drops"] == c["drops"],
                                      f"{len(c['drops'])} vs {len(b['drops'])}"))
    for key in only:
        result = ok.get((key, "contaminated"))
        if result:
            by_kind = {kind: [0, 0] for kind in KINDS}
            for doc, info in planted.items():
                by_kind[info["kind"]][0] += 1
                by_kind[info["kind"]][1] += doc in result["drops"]
            summary = ", ".join(f"{kind}: {dropped}/{total}" for kind, (total, dropped) in by_kind.items())
            others = len(set(result["drops"]) - set(planted))
            lines.append(f"INFO  {APPROACHES[key][0]} drops, by kind planted: {summary}; not planted: {others}")
    return lines


if __name__ == "__main__":
    main()
