"""Benchmark: MinHash near-duplicate removal, ``smollm-corpus fetch --dedup`` against datatrove.

Data, built once under --work: --docs documents of about 100 to 400 words (sentences of the
fineweb-edu sample recombined; generated English-like text without it) in a local folder laid
out like HuggingFaceTB/cosmopedia, two configs (stories, web_samples_v2) of --files parquet
files each. Near-duplicates are planted, and the ground truth kept beside the data:
  - within a config: pairs of a document and a copy of it with 0 (exact), 5, 15, 30 or 50% of
    its words replaced by other words of the corpus vocabulary;
  - across the configs: the same levels, the original in stories, the copy in web_samples_v2;
  - clusters: a document and 2 to 4 copies, each with 1 to 3% of its words replaced, that
    several LSH buckets join (which member is kept depends on the order of the unions);
  - every other document is unrelated to all the others.
The first of each group in the global order (all of stories, then all of web_samples_v2) is
the one to keep.

(a) ours: ``smollm-corpus fetch cosmopedia/stories cosmopedia/web_samples_v2 --dedup --format
    jsonl --num-proc 1`` from that folder, at --docs and at --larger times as many documents;
(b) datatrove's own pipeline (--datatrove-python), ``MinhashConfig()`` defaults as in the
    Cosmopedia recipe, LocalPipelineExecutor with one worker: signatures (1 task, so that
    datatrove's document ids are the global order), buckets (14 tasks, one per bucket),
    clusters (1 task), filter (1 task) writing the kept documents as jsonl;
(c) datatrove's signature stage alone, with a whitespace word tokenizer in place of spaCy.

Each runs once in a fresh process tree; wall, CPU and peak RSS are measured from outside.
Printed: documents per CPU second (target: ours at least 3x datatrove's), agreement of the
removed sets (target: at least 99%) and every disagreement, false positives among unrelated
documents (target: none), recall per planted level, and peak RSS at both sizes (target: under
1 GB, and flat as the corpus grows).

    .venv/bin/python benchmarks/bench_dedup.py                          # ~4 min on 2 cores, mostly datatrove
    .venv/bin/python benchmarks/bench_dedup.py --docs 2000 --larger 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONFIGS = ("stories", "web_samples_v2")
#: planted change levels: share of a copy's words replaced
LEVELS = {"exact": 0.0, "5%": 0.05, "15%": 0.15, "30%": 0.30, "50%": 0.50}
#: per level, planted pairs within a config and across the two, as shares of --docs
WITHIN_SHARE, CROSS_SHARE = 0.01, 0.005
#: clusters of 3 to 5 documents, as a share of --docs, and the words each copy has replaced
CLUSTER_SHARE, CLUSTER_CHANGE = 0.0025, (0.01, 0.03)
CLUSTER_LEVEL = "1-3%"
KIND_LABELS = {"within": "within a config", "across": "across the configs", "cluster": "clusters of 3 to 5"}
WORDS_PER_DOC = (100, 400)
#: rows per row group: the `datasets` writer default
ROW_GROUP_ROWS = 1000
#: datatrove's MinhashConfig() defaults
NGRAM, BUCKETS, HASHES_PER_BUCKET = 5, 14, 8
#: peak RSS at the larger size at most this many times that at --docs counts as flat
FLAT_RSS = 1.25
CORPUS_VERSION = 1
DEFAULT_DATATROVE = Path("/tmp/dtvenv/bin/python")
INSTALL = 'pip install datatrove spacy "xxhash<4" regex tokenizers orjson'
RUN_TIMEOUT_S = 3600


# ---------------------------------------------------------------------------------------------
# the corpus


def _document(rng: random.Random, sentences: list[tuple[str, int]]) -> str:
    """Paragraphs of 1 to 6 random sentences until the document has its drawn number of words."""
    target = rng.randint(*WORDS_PER_DOC)
    paragraphs, words = [], 0
    while words < target:
        chosen = rng.choices(sentences, k=rng.randint(1, 6))
        paragraphs.append(" ".join(s for s, _ in chosen))
        words += sum(n for _, n in chosen)
    return "\n".join(paragraphs)


def change_words(rng: random.Random, text: str, share: float, vocabulary: list[str]) -> str:
    """``text`` with ``share`` of its words replaced by other words of ``vocabulary``; whitespace kept."""
    parts = re.split(r"(\s+)", text)  # words at even positions
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    for i in rng.sample(words, round(len(words) * share)):
        new = rng.choice(vocabulary)
        while new == parts[i].lower():
            new = rng.choice(vocabulary)
        parts[i] = new
    return "".join(parts)


def shingles(text: str) -> set[tuple[str, ...]]:
    """5-word shingles of roughly datatrove's normalisation (lowercase, numbers to 0, words only)."""
    words = re.findall(r"\w+", re.sub(r"\d+([.,]\d+)?", "0", text.lower()))
    return set(zip(*(words[i:] for i in range(NGRAM))))


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def candidate_probability(similarity: float) -> float:
    """Chance that two documents of this Jaccard similarity share a whole bucket: 1 - (1 - s^8)^14."""
    return 1 - (1 - similarity**HASHES_PER_BUCKET) ** BUCKETS


def _groups(rng: random.Random, docs: int, new_doc, vocabulary: list[str]) -> list[tuple[str, str, list]]:
    """Planted groups: (kind, level, [(config, text), ...]), the first member the document copied."""
    groups = []
    for level, share in LEVELS.items():
        for k in range(round(docs * WITHIN_SHARE)):
            config, base = CONFIGS[k % 2], new_doc()
            groups.append(("within", level, [(config, base), (config, change_words(rng, base, share, vocabulary))]))
        for _ in range(round(docs * CROSS_SHARE)):
            base = new_doc()
            copy = change_words(rng, base, share, vocabulary)
            groups.append(("across", level, [(CONFIGS[0], base), (CONFIGS[1], copy)]))
    for k in range(round(docs * CLUSTER_SHARE)):
        config, base = CONFIGS[k % 2], new_doc()
        copies = [change_words(rng, base, rng.uniform(*CLUSTER_CHANGE), vocabulary) for _ in range(rng.randint(2, 4))]
        groups.append(("cluster", CLUSTER_LEVEL, [(config, text) for text in [base, *copies]]))
    return groups


def _rows(rng: random.Random, config: str, texts: list[str], vocabulary: list[str]):  # -> pa.Table
    import pyarrow as pa
    from mirror import COSMOPEDIA_SCHEMA

    formats, audiences = ("textbook", "story", "blogpost", "wikihow"), ("general", "young_children", "college_students")
    prompts, fmts, auds = [], [], []
    for _ in texts:
        fmt, audience = rng.choice(formats), rng.choice(audiences)
        topic = " ".join(rng.choices(vocabulary, k=rng.randint(2, 4)))
        prompts.append(f"Write a {fmt} for {audience.replace('_', ' ')} about \"{topic}\".")
        fmts.append(fmt)
        auds.append(audience)
    return pa.table({
        "prompt": prompts, "text": texts, "text_token_length": [round(len(t) / 4.4) for t in texts],
        "format": fmts, "audience": auds, "seed_data": [config] * len(texts),
    }, schema=COSMOPEDIA_SCHEMA)


def build(work: Path, docs: int, files: int) -> Path:
    """The corpus under ``work``, built once: ``mirror/`` (the Cosmopedia-shaped folder), ``docs.jsonl``
    (every row, every column, in the global order) and ``truth.json`` (what each document is)."""
    import pyarrow.parquet as pq

    sys.path.insert(0, str(common.REPO / "tests"))
    from mirror import build_repo

    pool = common.text_pool()
    tag = "fineweb" if pool.source.startswith(common.SAMPLE.name) else "generated"
    folder = work / f"dedup-v{CORPUS_VERSION}-{docs}docs-{files}files-{tag}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(f"dedup:{docs}")
    sentences = [(s, len(s.split())) for s in pool.sentences]
    vocabulary = pool.words()
    groups = _groups(rng, docs, lambda: _document(rng, sentences), vocabulary)

    sizes = {CONFIGS[0]: docs // 2, CONFIGS[1]: docs - docs // 2}
    placed: dict[str, list[tuple[int | None, str]]] = {config: [] for config in CONFIGS}
    for group, (_, _, members) in enumerate(groups):
        for config, text in members:
            placed[config].append((group, text))
    for config, size in sizes.items():
        if len(placed[config]) > size:
            raise SystemExit(f"--docs {docs} is too small for the planted near-duplicates")
        placed[config] += [(None, _document(rng, sentences)) for _ in range(size - len(placed[config]))]
        rng.shuffle(placed[config])

    ordered = [(config, group, text) for config in CONFIGS for group, text in placed[config]]
    truth = [{"kind": "unrelated", "level": None, "group": None, "role": None, "first": None, "jaccard": None}
             for _ in ordered]
    indices_of: dict[int, list[int]] = {}
    for index, (_, group, _) in enumerate(ordered):
        if group is not None:
            indices_of.setdefault(group, []).append(index)
    for group, indices in indices_of.items():
        kind, level, _ = groups[group]
        first = indices[0]
        for index in indices:
            later = index != first
            truth[index] = {"kind": kind, "level": level, "group": group, "role": "later" if later else "first",
                            "first": first, "jaccard": jaccard(ordered[first][2], ordered[index][2]) if later else None}

    mirror = folder / "mirror"
    tables, layout = {}, {}
    for config in CONFIGS:
        texts = [text for _, text in placed[config]]
        table = _rows(rng, config, texts, vocabulary)
        bounds = [round(len(texts) * k / files) for k in range(files + 1)]
        tables[config] = {"train": [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]}
        layout[config] = [b - a for a, b in zip(bounds, bounds[1:])]
    build_repo(mirror, tables)
    for path in sorted(mirror.rglob("*.parquet")):  # build_repo writes test-sized row groups
        pq.write_table(pq.read_table(path), path, row_group_size=ROW_GROUP_ROWS)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for config in CONFIGS:
            for part in tables[config]["train"]:
                for row in part.to_pylist():
                    f.write(json.dumps(row) + "\n")
    (folder / "truth.json").write_text(json.dumps({
        "source": pool.source, "sizes": sizes, "files": layout, "docs": truth,
        "words": sum(len(text.split()) for _, _, text in ordered),
        "bytes": sum(len(text.encode()) for _, _, text in ordered),
    }))
    (folder / ".complete").write_text("")
    return folder


class Truth:
    """What each document of a corpus is, by global index (stories, then web_samples_v2)."""

    def __init__(self, folder: Path) -> None:
        data = json.loads((folder / "truth.json").read_text())
        self.source, self.words, self.bytes = data["source"], data["words"], data["bytes"]
        self.sizes: dict[str, int] = data["sizes"]
        self.files: dict[str, list[int]] = data["files"]
        self.docs: list[dict] = data["docs"]
        self.offsets = {}
        start = 0
        for config in CONFIGS:
            self.offsets[config] = start
            start += self.sizes[config]

    def __len__(self) -> int:
        return len(self.docs)

    def locate(self, index: int) -> tuple[str, int]:
        """(config, row in that config) of a global index."""
        config = CONFIGS[0] if index < self.sizes[CONFIGS[0]] else CONFIGS[1]
        return config, index - self.offsets[config]

    def file_of(self, config: str, row: int) -> tuple[str, int]:
        """(repository path of the parquet file, row in it) holding ``row`` of ``config``."""
        sizes = self.files[config]
        for k, size in enumerate(sizes):
            if row < size:
                return f"data/{config}/train-{k:05d}-of-{len(sizes):05d}.parquet", row
            row -= size
        raise IndexError(f"{config} has no row {row}")

    def unrelated(self, removed: set[int]) -> list[int]:
        return sorted(i for i in removed if self.docs[i]["kind"] == "unrelated")

    def firsts(self, removed: set[int]) -> list[int]:
        """Removed documents that are the first of their planted group (a later copy was kept instead)."""
        return sorted(i for i in removed if self.docs[i]["role"] == "first")


# ---------------------------------------------------------------------------------------------
# (a) ours


def run_ours(corpus: Path, truth: Truth, work: Path) -> dict:
    """One measured ``fetch --dedup`` of both configs, and what its output says."""
    run = work / "runs" / f"dedup-ours-{len(truth)}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    out = run / "out"
    python = common.REPO / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "smollm_corpus", "fetch",
           *(f"cosmopedia/{config}" for config in CONFIGS), "--dedup", "--source", str(corpus / "mirror"),
           "--format", "jsonl", "-o", str(out), "--num-proc", "1", "-q"]
    measured = common.run_measured(cmd, env=common.base_env(run / "scratch"), log=run / "log.txt",
                                   timeout_s=RUN_TIMEOUT_S)
    result = {"measured": measured, "docs": len(truth)}
    if not measured.ok:
        return {**result, "error": f"{measured.error()} (log: {measured.log})"}
    try:
        return {**result, **read_ours(out, corpus, truth)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {**result, "error": f"output not as expected: {type(exc).__name__}: {exc} (in {out})"}


def read_ours(out: Path, corpus: Path, truth: Truth) -> dict:
    """Removed documents (global index -> (duplicate_of global index, similarity)) and checks of the output."""
    removed: dict[int, tuple[int, float]] = {}
    bad_location, not_earlier, manifest_mismatch = [], [], []
    for config in CONFIGS:
        folder = out / "cosmopedia" / config
        lines = (folder / "duplicates.jsonl").read_text(encoding="utf-8").splitlines()
        for line in filter(None, lines):
            entry = json.loads(line)
            index = truth.offsets[config] + entry["row"]
            of = entry["duplicate_of"]
            of_config = of["dataset"].removeprefix("cosmopedia/")
            of_index = truth.offsets[of_config] + of["row"]
            removed[index] = (of_index, float(entry["similarity"]))
            if [entry["file"], entry["file_row"]] != list(truth.file_of(config, entry["row"])) or \
                    [of["file"], of["file_row"]] != list(truth.file_of(of_config, of["row"])):
                bad_location.append(index)
            if of_index >= index:
                not_earlier.append(index)
        manifest = json.loads((folder / "manifest.json").read_text())
        counted = (manifest.get("stats") or manifest)["skipped"].get("duplicate", 0)
        listed = sum(1 for line in lines if line)
        if counted != listed:
            manifest_mismatch.append(f"{config}: manifest {counted}, duplicates.jsonl {listed}")
    return {"removed": removed, "bad_location": bad_location, "not_earlier": not_earlier,
            "manifest_mismatch": manifest_mismatch, "kept_mismatch": compare_kept(out, corpus, truth, set(removed))}


def compare_kept(out: Path, corpus: Path, truth: Truth, removed: set[int]) -> list[str]:
    """Differences between the input.jsonl files and the documents not removed (in order, every column)."""
    problems = []
    with open(corpus / "docs.jsonl", encoding="utf-8") as expected:
        rows = enumerate(map(json.loads, expected))
        for config in CONFIGS:
            wanted = [row for index, row in (next(rows) for _ in range(truth.sizes[config])) if index not in removed]
            with open(out / "cosmopedia" / config / "input.jsonl", encoding="utf-8") as f:
                got = [json.loads(line) for line in f if line.strip()]
            if len(got) != len(wanted):
                problems.append(f"{config}: {len(got):,} kept documents written, {len(wanted):,} expected")
            else:
                wrong = next((k for k, (a, b) in enumerate(zip(got, wanted)) if a != b), None)
                if wrong is not None:
                    problems.append(f"{config}: kept document {wrong} differs from the row expected there")
    return problems


# ---------------------------------------------------------------------------------------------
# (b), (c) datatrove, run by its own interpreter

DATATROVE_SCRIPT = '''\
"""datatrove's MinHash deduplication with MinhashConfig() defaults, on one jsonl of documents.

    python datatrove_pipeline.py DOCS.jsonl WORK_DIR full|whitespace RESULT.json

full: signatures (1 task), buckets (one task per bucket), clusters (1 task), filter (1 task)
writing the kept documents to WORK_DIR/output as jsonl. whitespace: the signature stage alone,
words split on whitespace instead of by spaCy. Document ids are the line numbers of DOCS.jsonl.
"""
import json
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
)

DOCS, ROOT, MODE, RESULT = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
CONFIG = MinhashConfig()


def read_docs(data=None, rank: int = 0, world_size: int = 1):
    """Every row in file order: the text, the line number as id, the other columns as metadata."""
    with open(DOCS, encoding="utf-8") as f:
        for index, line in enumerate(f):
            row = json.loads(line)
            yield Document(text=row.pop("text"), id=str(index), metadata=row)


def write_kept(data, rank: int = 0, world_size: int = 1):
    """The kept documents as jsonl, every column (as JsonlWriter without compression would)."""
    folder = ROOT / "output"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{rank:05d}.jsonl", "w", encoding="utf-8") as f:
        for doc in data:
            f.write(json.dumps({"text": doc.text, "id": doc.id, **doc.metadata}) + "\\n")
            yield doc


class WhitespaceTokenizer:
    def word_tokenize(self, text):
        return text.split()


def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


stages = {}


def stage(name, pipeline, tasks):
    wall, cpu = time.perf_counter(), cpu_s()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(ROOT / "logs" / name)).run()
    stages[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_s() - cpu}


signatures = MinhashDedupSignature(str(ROOT / "signatures"), config=CONFIG)
if MODE == "whitespace":
    signatures.word_tokenizer = WhitespaceTokenizer()
stage("signatures", [read_docs, signatures], 1)
removed = kept = None
if MODE == "full":
    stage("buckets", [MinhashDedupBuckets(str(ROOT / "signatures"), str(ROOT / "buckets"), config=CONFIG)],
          CONFIG.num_buckets)
    stage("clusters", [MinhashDedupCluster(str(ROOT / "buckets"), str(ROOT / "remove_ids"), config=CONFIG,
                                           save_cluster_id=True)], 1)
    stage("filter", [read_docs, MinhashDedupFilter(str(ROOT / "remove_ids")), write_kept], 1)
    # one signature task: its doc_idx is the line number
    removed = sorted(int(i) for p in sorted((ROOT / "remove_ids").glob("*.remove")) for i in np.fromfile(p, "<u4"))
    with open(ROOT / "output" / "00000.jsonl", "rb") as f:
        kept = sum(1 for _ in f)
    # datatrove's clusters (its save_cluster_id): (doc_idx, cluster id) pairs of every clustered document
    pairs = np.fromfile(ROOT / "remove_ids" / "000000.clusters", "<u4").reshape(-1, 2).tolist()
    clusters = {}
    for doc, cluster in pairs:
        clusters.setdefault(cluster, []).append(doc)
    clusters = sorted(sorted(c) for c in clusters.values())
else:
    clusters = None
Path(RESULT).write_text(json.dumps({
    "stages": stages, "removed": removed, "kept": kept, "clusters": clusters,
    "versions": {name: version(name) for name in ("datatrove", "spacy", "xxhash", "numpy")},
}))
'''


def datatrove_problem(python: Path | None, scratch: Path) -> str | None:
    """Why datatrove cannot run with ``python``, or None if it can."""
    if python is None:
        return f"no --datatrove-python given, and {DEFAULT_DATATROVE} does not exist"
    if not python.exists():
        return f"{python} does not exist"
    probe = ("import datatrove.pipeline.dedup.minhash, spacy, regex, xxhash; "
             "assert int(xxhash.VERSION.split('.')[0]) < 4, f'xxhash {xxhash.VERSION} (datatrove needs xxhash<4)'")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                          env=common.base_env(scratch), timeout=120)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"{python} cannot run it: {lines[-1] if lines else f'exit {done.returncode}'}"
    return None


def run_datatrove(python: Path, corpus: Path, truth: Truth, work: Path, mode: str) -> dict:
    """One measured run of the datatrove script in ``mode`` (full or whitespace)."""
    run = work / "runs" / f"dedup-datatrove-{mode}-{len(truth)}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    script, result_path = run / "datatrove_pipeline.py", run / "result.json"
    script.write_text(DATATROVE_SCRIPT)
    cmd = [str(python), str(script), str(corpus / "docs.jsonl"), str(run / "work"), mode, str(result_path)]
    measured = common.run_measured(cmd, env=common.base_env(run / "scratch"), log=run / "log.txt",
                                   timeout_s=RUN_TIMEOUT_S)
    result = {"measured": measured, "docs": len(truth), "script": script}
    if not measured.ok or not result_path.exists():
        return {**result, "error": f"{measured.error()} (log: {measured.log})"}
    found = json.loads(result_path.read_text())
    if found["removed"] is not None:
        found["removed"] = set(found["removed"])
    return {**result, **found}


# ---------------------------------------------------------------------------------------------
# reporting


def speed_row(label: str, result: dict, reference: dict | None, truth: Truth | None) -> list[object]:
    if "error" in result:
        return [label, f"{result['docs']:,}", result["error"], "", "", "", "", "", ""]
    m = result["measured"]
    per_cpu = result["docs"] / m.cpu_s if m.cpu_s else None
    comparable = reference and "error" not in reference and reference["docs"] == result["docs"]
    ref = reference["docs"] / reference["measured"].cpu_s if comparable else None
    removed = result.get("removed")
    return [label, f"{result['docs']:,}", common.num(m.wall_s), common.num(m.cpu_s), common.num(per_cpu, 0),
            common.ratio(per_cpu, ref), common.num(m.peak_rss_mb, 0),
            "n/a" if removed is None else f"{len(removed):,}",
            "n/a" if removed is None or truth is None else len(truth.unrelated(set(removed)))]


def recall_rows(truth: Truth, ours: set[int] | None, theirs: set[int] | None,
                similarity: dict[int, tuple[int, float]] | None) -> list[list[object]]:
    def share(removed: set[int] | None, indices: list[int]) -> str:
        if removed is None:
            return "n/a"
        hit = sum(i in removed for i in indices)
        return f"{hit}/{len(indices)} ({100 * hit / len(indices):.0f}%)" if indices else "0/0"

    rows = []
    for kind, levels in (("within", list(LEVELS)), ("across", list(LEVELS)), ("cluster", [CLUSTER_LEVEL])):
        for level in levels:
            later = [i for i, d in enumerate(truth.docs) if d["kind"] == kind and d["level"] == level
                     and d["role"] == "later"]
            if not later:
                continue
            sims = [truth.docs[i]["jaccard"] for i in later]
            estimated = [similarity[i][1] for i in later if similarity and i in similarity]
            rows.append([
                f"{KIND_LABELS[kind]}, {level}", len(later), f"{sum(sims) / len(sims):.2f}",
                f"{sum(map(candidate_probability, sims)) / len(sims):.0%}" if kind != "cluster" else "-",
                share(ours, later), share(theirs, later),
                f"{sum(estimated) / len(estimated):.2f}" if estimated else "n/a",
            ])
    return rows


def agreement(ours: set[int], theirs: set[int]) -> float:
    union = ours | theirs
    return len(ours & theirs) / len(union) if union else 1.0


def first_kept(clusters: list[list[int]]) -> set[int]:
    """What datatrove's clusters remove when each keeps its first document (the rule of --dedup)."""
    return {doc for cluster in clusters for doc in cluster[1:]}


def kept_differently(truth: Truth, ours: set[int], theirs: set[int]) -> list[int]:
    """Planted groups (by first document) where both remove as many members, but not the same ones."""
    touched = {truth.docs[i]["first"] for i in ours ^ theirs if truth.docs[i]["group"] is not None}
    found = []
    for first in sorted(touched):
        members = {i for i, d in enumerate(truth.docs) if d["first"] == first}
        if len(members & ours) == len(members & theirs):
            found.append(first)
    return found


def disagreement_rows(truth: Truth, ours: set[int], theirs: set[int]) -> list[list[object]]:
    rows = []
    for index in sorted(ours ^ theirs):
        doc = truth.docs[index]
        config, row = truth.locate(index)
        jac = "" if doc["jaccard"] is None else f"{doc['jaccard']:.2f}"
        rows.append([index, config, row, "ours only" if index in ours else "datatrove only", doc["kind"],
                     doc["level"] or "", doc["role"] or "", "" if doc["first"] is None else doc["first"], jac])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="documents in the corpus, both configs together")
    parser.add_argument("--larger", type=float, default=2.0,
                        help="ours runs again on this many times --docs documents, for peak RSS; 0 to skip")
    parser.add_argument("--files", type=int, default=4, help="parquet files per config")
    parser.add_argument("--datatrove-python", type=Path,
                        default=DEFAULT_DATATROVE if DEFAULT_DATATROVE.exists() else None,
                        help=f"interpreter with datatrove ({INSTALL}); skipped if absent")
    parser.add_argument("--only", default="ours,datatrove,whitespace",
                        help="comma-separated runs, from ours, datatrove, whitespace (datatrove's signatures alone)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="data and runs live here")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= {"ours", "datatrove", "whitespace"} or args.docs < 1000 or args.files < 1 or args.larger < 0:
        parser.error("--only takes ours, datatrove, whitespace; --docs must be at least 1000, --files at least 1, "
                     "--larger at least 0")
    common.install_cleanup()
    work = args.work.resolve()
    sizes = [args.docs] + ([round(args.docs * args.larger)] if args.larger and "ours" in only else [])
    print("building the data (once) ...", file=sys.stderr, flush=True)
    corpora = {n: build(work, n, args.files) for n in dict.fromkeys(sizes)}
    truths = {n: Truth(folder) for n, folder in corpora.items()}
    truth, corpus = truths[args.docs], corpora[args.docs]

    skipped = None
    if only & {"datatrove", "whitespace"}:
        problem = datatrove_problem(args.datatrove_python, work / "runs" / "dedup-probe")
        if problem:
            skipped = (f"datatrove not run: {problem}. Install it in a virtualenv of its own "
                       f"(python -m venv /tmp/dtvenv && /tmp/dtvenv/bin/{INSTALL}) and pass its python "
                       "with --datatrove-python.")
            print(skipped, file=sys.stderr, flush=True)
            only -= {"datatrove", "whitespace"}

    ours: dict[int, dict] = {}
    if "ours" in only:
        for n in dict.fromkeys(sizes):
            print(f"ours: fetch --dedup of {n:,} documents", file=sys.stderr, flush=True)
            ours[n] = run_ours(corpora[n], truths[n], work)
    theirs = whitespace = None
    if "datatrove" in only:
        print(f"datatrove: the four stages on {args.docs:,} documents", file=sys.stderr, flush=True)
        theirs = run_datatrove(args.datatrove_python, corpus, truth, work, "full")
    if "whitespace" in only:
        print(f"datatrove: signatures alone, whitespace words, on {args.docs:,} documents", file=sys.stderr, flush=True)
        whitespace = run_datatrove(args.datatrove_python, corpus, truth, work, "whitespace")
    report(args, truth, truths, ours, theirs, whitespace, skipped)


def report(args, truth: Truth, truths: dict[int, Truth], ours: dict[int, dict], theirs: dict | None,
           whitespace: dict | None, skipped: str | None) -> None:
    base = ours.get(args.docs)
    ok_ours = base if base and "error" not in base else None
    ok_theirs = theirs if theirs and "error" not in theirs else None
    planted = [d for d in truth.docs if d["role"] == "later"]

    print("# bench_dedup: MinHash near-duplicate removal, smollm-corpus fetch --dedup vs datatrove\n")
    print(common.machine_summary())
    print(f"- text: {truth.source}; {len(truth):,} documents ({truth.sizes[CONFIGS[0]]:,} stories, "
          f"{truth.sizes[CONFIGS[1]]:,} web_samples_v2), {truth.words / len(truth):.0f} words and "
          f"{truth.bytes / len(truth) / 1000:.1f} kB on average, {truth.bytes / common.MB:.1f} MB in all; "
          f"{args.files} parquet files per config, row groups of {ROW_GROUP_ROWS:,} rows")
    unrelated = sum(d["kind"] == "unrelated" for d in truth.docs)
    print(f"- planted: {len(planted):,} near-duplicate copies; {unrelated:,} documents unrelated to any other")
    for source in (theirs, whitespace):
        if source and "versions" in source:
            versions = ", ".join(f"{name} {v}" for name, v in source["versions"].items())
            print(f"- datatrove side: {args.datatrove_python}, {versions}; the script that ran: {source['script']}")
            break
    if skipped:
        print(f"- {skipped}")
    print()

    headers = ["run", "documents", "wall s", "CPU s", "documents/s per CPU s", "vs datatrove per CPU s",
               "peak RSS MB", "removed", "unrelated removed"]
    rows = [speed_row(f"(a) ours, fetch --dedup{' (larger)' if n != args.docs else ''}", r, theirs, truths[n])
            for n, r in ours.items()]
    if theirs:
        rows.append(speed_row("(b) datatrove, 4 stages, spaCy words", theirs, theirs, truth))
    if whitespace:
        rows.append(speed_row("(c) datatrove signatures alone, whitespace words", whitespace, theirs, None))
    print("## Speed and memory\n")
    print(common.markdown_table(headers, rows))
    print("\nWhole runs, start-up included, one process tree each; CPU is user + sys of the whole tree; "
          "peak RSS is the tree's summed RSS. Removed: documents dropped as near-duplicates.\n")
    stage_lines = []
    for label, result in (("(b)", theirs), ("(c)", whitespace)):
        if result and "error" not in result:
            parts = ", ".join(f"{name} {s['cpu_s']:.1f}" for name, s in result["stages"].items())
            sig = result["stages"]["signatures"]["cpu_s"]
            stage_lines.append(f"- {label} CPU s by stage: {parts}; the signature stage alone: "
                               f"{common.num(result['docs'] / sig if sig else None, 0)} documents/s per CPU s")
    if stage_lines:
        print("\n".join(stage_lines) + "\n")

    print("## Near-duplicates found\n")
    ours_removed = set(ok_ours["removed"]) if ok_ours else None
    theirs_removed = ok_theirs["removed"] if ok_theirs else None
    print(common.markdown_table(
        ["planted copies", "copies", "≈ Jaccard", "LSH candidate chance", "(a) ours removed", "(b) datatrove removed",
         "ours' similarity"],
        recall_rows(truth, ours_removed, theirs_removed, ok_ours["removed"] if ok_ours else None)))
    print("\n≈ Jaccard: mean over the copies of the Jaccard similarity of 5-word shingles with the group's first "
          "document (close to datatrove's normalisation). LSH candidate chance: mean of 1 - (1 - s^8)^14 over them, "
          "what MinHash with 14 buckets of 8 hashes is expected to find. Ours' similarity: mean of the estimates "
          "in duplicates.jsonl of the copies ours removed.\n")
    for label, removed in (("(a) ours", ours_removed), ("(b) datatrove", theirs_removed)):
        if removed is not None:
            print(f"- {label}: unrelated documents removed: {len(truth.unrelated(removed))}; first documents of a "
                  f"planted group removed (a later one kept instead): {len(truth.firsts(removed))}")
    if ok_ours and ok_theirs:
        agree = agreement(ours_removed, theirs_removed)
        print(f"- removed sets: ours {len(ours_removed):,}, datatrove {len(theirs_removed):,}, both "
              f"{len(ours_removed & theirs_removed):,}; agreement |ours ∩ datatrove| / |ours ∪ datatrove| "
              f"= {agree:.2%}\n")
        swapped = kept_differently(truth, ours_removed, theirs_removed)
        if swapped:
            print(f"- planted groups where both remove as many documents but keep a different one: {len(swapped)} "
                  "(datatrove keeps the root of its union-find, not always the group's first document)\n")
        firsts = first_kept(ok_theirs["clusters"])
        print(f"- datatrove's clusters ({len(ok_theirs['clusters']):,}, from its save_cluster_id), each keeping its "
              f"first document as ours does: {len(firsts):,} removed; agreement with ours "
              f"{agreement(ours_removed, firsts):.2%} ({len(ours_removed ^ firsts)} documents differ)\n")
        differ = disagreement_rows(truth, ours_removed, theirs_removed)
        if differ:
            print(f"### Every disagreement ({len(differ)})\n")
            print(common.markdown_table(["global index", "config", "row", "removed by", "planted", "level", "role",
                                         "group's first", "≈ Jaccard to it"], differ))
            print()
    print()

    print("## Targets\n")
    lines = []
    if ok_ours and ok_theirs:
        speed = (ok_ours["docs"] / ok_ours["measured"].cpu_s) / (ok_theirs["docs"] / ok_theirs["measured"].cpu_s)
        lines.append(common.check("ours >= 3x datatrove in documents per CPU second", speed >= 3, f"{speed:.2f}x"))
        agree = agreement(ours_removed, theirs_removed)
        lines.append(common.check("removed sets agree >= 99%", agree >= 0.99,
                                  f"{agree:.2%}, {len(ours_removed ^ theirs_removed)} documents differ"))
        firsts = first_kept(ok_theirs["clusters"])
        lines.append(common.check("same clusters as datatrove, the first of each kept", firsts == ours_removed,
                                  f"{agreement(ours_removed, firsts):.2%}, {len(ours_removed ^ firsts)} documents differ"))
    else:
        why = "needs both (a) and (b)"
        lines.append(common.check("ours >= 3x datatrove in documents per CPU second", None, why))
        lines.append(common.check("removed sets agree >= 99%", None, why))
    for n, result in ours.items():
        size = f"{n:,} documents"
        if "error" in result:
            lines.append(common.check(f"ours runs, {size}", False, result["error"]))
            continue
        removed = set(result["removed"])
        fp = truths[n].unrelated(removed)
        lines.append(common.check(f"no unrelated document removed, {size}", not fp,
                                  f"{len(fp)}: {fp[:20]}" if fp else "none"))
        exact = [i for i, d in enumerate(truths[n].docs) if d["level"] == "exact" and d["role"] == "later"]
        missed = [i for i in exact if i not in removed]
        detail = f"{len(exact) - len(missed)}/{len(exact)}" + (f", missed {missed[:20]}" if missed else "")
        lines.append(common.check(f"every exact copy removed, {size}", not missed, detail))
        lines.append(common.check(f"input.jsonl holds exactly the documents not removed, in order, {size}",
                                  not result["kept_mismatch"], "; ".join(result["kept_mismatch"]) or "yes"))
        lines.append(common.check(f"manifest stats.skipped.duplicate counts duplicates.jsonl, {size}",
                                  not result["manifest_mismatch"], "; ".join(result["manifest_mismatch"]) or "yes"))
        lines.append(common.check(f"file and file_row match row (entry and duplicate_of), {size}",
                                  not result["bad_location"], f"{len(result['bad_location'])} wrong"))
        lines.append(common.check(f"duplicate_of is an earlier document, {size}", not result["not_earlier"],
                                  f"{len(result['not_earlier'])} not earlier"))
        rss = result["measured"].peak_rss_mb
        lines.append(common.check(f"peak RSS < 1 GB, {size}", rss < 1000, f"{rss:.0f} MB"))
    if ok_theirs:
        counted = ok_theirs["kept"] + len(ok_theirs["removed"])
        lines.append(common.check("datatrove kept + removed = documents", counted == len(truth),
                                  f"{ok_theirs['kept']:,} + {len(ok_theirs['removed']):,} of {len(truth):,}"))
    runs = [r for r in ours.values() if "error" not in r]
    if len(ours) > 1:
        small, large = ours[min(ours)], ours[max(ours)]
        if "error" in small or "error" in large:
            lines.append(common.check("peak RSS flat as the corpus grows", None, "a run failed"))
        else:
            grow = large["measured"].peak_rss_mb / small["measured"].peak_rss_mb
            lines.append(common.check(
                f"peak RSS flat as the corpus grows (at most {FLAT_RSS}x)", grow <= FLAT_RSS,
                f"{small['measured'].peak_rss_mb:.0f} MB at {small['docs']:,} documents, "
                f"{large['measured'].peak_rss_mb:.0f} MB at {large['docs']:,}: {grow:.2f}x"))
    for result in runs:
        same_group = sum(truths[result["docs"]].docs[i]["group"] is not None
                         and truths[result["docs"]].docs[i]["group"] == truths[result["docs"]].docs[of]["group"]
                         for i, (of, _) in result["removed"].items())
        lines.append(f"INFO  ours at {result['docs']:,} documents: duplicate_of is in the removed document's planted "
                     f"group for {same_group} of {len(result['removed'])}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
