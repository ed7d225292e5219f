"""--dedup end to end: planted near-duplicates within and across datasets, the first-occurrence rule, resumes."""

import fcntl
import hashlib
import json
import random
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import CLI, kill_when, run_cli
from mirror import COSMOPEDIA_SCHEMA, build_repo
from smollm_corpus import fetch, fetch_all
from smollm_corpus.errors import OutputError, UsageError

STORIES, WEB = "cosmopedia/stories", "cosmopedia/web_samples_v2"


def _table(texts: list[str], formats: list[str] | None = None) -> pa.Table:
    n = len(texts)
    return pa.table({"prompt": [f"Write about topic {i}." for i in range(n)], "text": texts,
                     "text_token_length": [len(t) // 4 for t in texts], "format": formats or ["textbook"] * n,
                     "audience": ["general"] * n, "seed_data": ["seed"] * n}, schema=COSMOPEDIA_SCHEMA)


def _corpus(rows_a: int, rows_b: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Unrelated documents of 40 to 120 random words, with copies planted where the tests expect them."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(5000)]

    def doc() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(40, 120)))

    a, b = [doc() for _ in range(rows_a)], [doc() for _ in range(rows_b)]
    a[150] = a[3]  # an exact copy in the same dataset
    words = a[4].split()
    words[-1] = "changed"
    a[160] = " ".join(words)  # one word of about 80 changed: still a near-duplicate
    a[170] = "Too short to sign."  # fewer than 5 words: never a duplicate,
    a[171] = "Too short to sign."  # even of an identical document
    b[10] = a[7].upper() + "!"  # the same words after normalisation, in the other dataset
    b[20] = a[150]  # a copy of a copy: a duplicate of the first
    b[30] = b[31]  # a later document copies an earlier one's text: the earlier is kept
    return a, b


#: rows each test fixture removes, per dataset, with the dataset and row each duplicates
EXPECTED = {STORIES: {150: (STORIES, 3), 160: (STORIES, 4)}, WEB: {10: (STORIES, 7), 20: (STORIES, 3), 31: (WEB, 30)}}


def _repo(root: Path, rows_a: int, rows_b: int, files_a: int) -> Path:
    a, b = _corpus(rows_a, rows_b)
    step = -(-rows_a // files_a)
    formats = ["excluded" if i == 3 else "textbook" for i in range(rows_a)]
    return build_repo(root, {"stories": {"train": [_table(a[i:i + step], formats[i:i + step]) for i in range(0, rows_a, step)]},
                             "web_samples_v2": {"train": [_table(b)]}})


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return _repo(tmp_path_factory.mktemp("dedup_repo"), 300, 120, 3)


@pytest.fixture(scope="module")
def plain(repo, tmp_path_factory) -> Path:
    """Each dataset fetched without --dedup, as jsonl: one line per document."""
    out = tmp_path_factory.mktemp("plain")
    for name in (STORIES, WEB):
        fetch(name, out, source_repo=str(repo), format="jsonl")
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _without(plain: Path, name: str, rows: set[int]) -> list[str]:
    return [line for i, line in enumerate(_lines(plain / name / "input.jsonl")) if i not in rows]


def test_planted_duplicates_are_removed_within_and_across_datasets(repo, plain, tmp_path):
    results = fetch_all([STORIES, WEB], tmp_path, dedup=True, source_repo=str(repo), format="jsonl")
    for result, name in zip(results, (STORIES, WEB)):
        expected = EXPECTED[name]
        assert _lines(tmp_path / name / "input.jsonl") == _without(plain, name, set(expected))
        assert result.stats.skipped["duplicate"] == len(expected)
        listed = [json.loads(line) for line in _lines(tmp_path / name / "duplicates.jsonl")]
        assert [(d["row"], d["duplicate_of"]["dataset"], d["duplicate_of"]["row"]) for d in listed] == \
            [(row, *of) for row, of in expected.items()]
        assert all(d["similarity"] > 0.8 for d in listed)
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["complete"] and manifest["skipped"]["duplicate"] == len(expected)
        assert manifest["dedup"]["inputs"] == [STORIES, WEB]
    first = json.loads(_lines(tmp_path / STORIES / "duplicates.jsonl")[0])
    assert first["file"].endswith("train-00001-of-00003.parquet") and first["file_row"] == 50  # files of 100 rows
    assert not (tmp_path / ".dedup").exists()  # the work is gone once every dataset is complete


def test_the_first_occurrence_follows_the_command_order(repo, plain, tmp_path):
    fetch_all([WEB, STORIES], tmp_path, dedup=True, source_repo=str(repo), format="jsonl")
    # web_samples_v2 first: its copies are kept, and the stories documents they copy are removed
    assert _lines(tmp_path / WEB / "input.jsonl") == _without(plain, WEB, {31})
    assert _lines(tmp_path / STORIES / "input.jsonl") == _without(plain, STORIES, {3, 7, 150, 160})
    listed = [json.loads(line) for line in _lines(tmp_path / STORIES / "duplicates.jsonl")]
    assert [(d["row"], d["duplicate_of"]["dataset"], d["duplicate_of"]["row"]) for d in listed] == \
        [(3, WEB, 20), (7, WEB, 10), (150, WEB, 20), (160, STORIES, 4)]


def test_filtered_rows_never_count_as_first_occurrences(repo, tmp_path):
    fetch_all([STORIES, WEB], tmp_path, dedup=True, source_repo=str(repo), format="jsonl",
              where=["format != 'excluded'"])  # row 3 of stories is filtered out: its copy at 150 is the first
    listed = {name: [(d["row"], d["duplicate_of"]["row"]) for d in map(json.loads, _lines(tmp_path / name / "duplicates.jsonl"))]
              for name in (STORIES, WEB)}
    assert listed == {STORIES: [(160, 4)], WEB: [(10, 7), (20, 150), (31, 30)]}
    manifest = json.loads((tmp_path / STORIES / "manifest.json").read_text())
    assert manifest["skipped"] == {"duplicate": 1, "filtered": 1}


@pytest.mark.parametrize("format_", ["txt", "bin"])
def test_same_bytes_for_any_number_of_workers(repo, tmp_path, format_):
    import toytokenizer

    extra = {}
    if format_ == "bin":
        tok = toytokenizer.save(toytokenizer.train(_corpus(300, 40)[0], 400), tmp_path / "tok")
        extra = {"tokenizer": str(tok), "shard_tokens": 5000}
    outputs = []
    for procs in (1, 4):
        out = tmp_path / f"n{procs}"
        fetch_all([STORIES, WEB], out, dedup=True, source_repo=str(repo), format=format_, num_proc=procs, **extra)
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*"))
                        if p.is_file() and p.name not in ("manifest.json", ".lock")})
    assert outputs[0] == outputs[1] and len(outputs[0]) >= 4
    if format_ == "txt":
        plain = fetch(WEB, tmp_path / "plain", source_repo=str(repo))
        assert plain.stats.documents - 3 == outputs[0][Path(WEB) / "input.txt"].count(b"\n\n") + 1


def test_a_rerun_with_other_datasets_is_another_fetch(repo, tmp_path):
    fetch_all([STORIES, WEB], tmp_path, dedup=True, source_repo=str(repo))
    again = fetch_all([STORIES, WEB], tmp_path, dedup=True, source_repo=str(repo))
    assert all(r.already_complete for r in again)
    with pytest.raises(OutputError, match="other options"):
        fetch_all([STORIES], tmp_path, dedup=True, source_repo=str(repo))
    with pytest.raises(UsageError, match="named twice"):
        fetch_all([STORIES, STORIES], tmp_path / "x", dedup=True, source_repo=str(repo))
    with pytest.raises(UsageError, match="--limit"):
        fetch_all([STORIES, WEB], tmp_path / "y", dedup=True, source_repo=str(repo), max_bytes=10_000)


class _Stop(Exception):
    pass


def _abandon(out: Path, repo: Path, names: list[str], **options) -> Path:
    """A deduplicated fetch stopped while signing; returns the work it leaves behind."""
    def stop(view) -> None:
        raise _Stop

    before = set((out / ".dedup").iterdir()) if (out / ".dedup").exists() else set()
    with pytest.raises(_Stop):
        fetch_all(names, out, dedup=True, source_repo=str(repo), progress=stop, **options)
    (work,) = set((out / ".dedup").iterdir()) - before
    assert json.loads((work / "names.json").read_text()) == names
    return work


def test_overwrite_deletes_the_work_of_the_fetches_it_replaces_and_no_other(repo, tmp_path):
    web = _abandon(tmp_path, repo, [WEB], limit=500)
    stories = _abandon(tmp_path, repo, [STORIES])
    fetch_all([STORIES], tmp_path, dedup=True, source_repo=str(repo), limit=300, overwrite=True)
    assert not stories.exists()  # STORIES' output was replaced: that fetch could never finish
    assert list((tmp_path / ".dedup").iterdir()) == [web]  # another dataset's: kept

    running = _abandon(tmp_path, repo, [STORIES], limit=100, overwrite=True)
    with open(running / ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the fetch holds it while it runs
        fetch_all([STORIES], tmp_path, dedup=True, source_repo=str(repo), limit=300, overwrite=True)
    assert sorted((tmp_path / ".dedup").iterdir()) == sorted([web, running])  # a running fetch's work: kept


# -- resumes after kill -9 in each pass ------------------------------------------------------------

@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> Path:
    return _repo(tmp_path_factory.mktemp("dedup_big"), 12000, 3000, 4)


@pytest.fixture(scope="module")
def reference(big_repo, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dedup_reference")
    result = run_cli("fetch", STORIES, WEB, "--dedup", "--source", str(big_repo), "-o", str(out), "-q")
    assert result.returncode == 0, result.stderr
    return _outputs(out)


def _outputs(out: Path) -> dict:
    found = {}
    for name in (STORIES, WEB):
        for file in ("input.txt", "duplicates.jsonl"):
            found[f"{name}/{file}"] = (out / name / file).read_bytes()
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["sha256"] == hashlib.sha256(found[f"{name}/input.txt"]).hexdigest()
    return found


def _start(repo: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([CLI, "fetch", STORIES, WEB, "--dedup", "--source", str(repo), "-o", str(out), "-q",
                             "--num-proc", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _work(out: Path) -> Path:
    (work,) = (out / ".dedup").iterdir()
    return work


def test_resume_after_kill_9_while_signing_and_while_writing(big_repo, reference, tmp_path):
    # signing: killed once the first dataset has a chunk signed, and again in the second dataset's signing
    kill_when(_start(big_repo, tmp_path), lambda: len(list(tmp_path.glob(".dedup/*/000/*.info"))) >= 1)
    kill_when(_start(big_repo, tmp_path), lambda: (tmp_path / WEB / "manifest.json").exists())
    # writing: killed with the first dataset's output part written, then with the second's
    for name in (STORIES, WEB):
        partial = tmp_path / name / "input.txt.incomplete"
        kill_when(_start(big_repo, tmp_path), lambda: partial.exists() and partial.stat().st_size > 0)
    assert (tmp_path / STORIES / "input.txt").exists() and not (tmp_path / WEB / "input.txt").exists()
    result = run_cli("fetch", STORIES, WEB, "--dedup", "--source", str(big_repo), "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    assert _outputs(tmp_path) == reference
    assert not (tmp_path / ".dedup").exists()


def _cluster_steps_again(repo: Path, out: Path):
    """A run stopped as its writing began, its clusters put back to undone; the steps, and their partitions."""
    from smollm_corpus import clusters, signed

    partial = out / STORIES / "input.txt.incomplete"
    kill_when(_start(repo, out), partial.exists)
    work = _work(out)
    (work / "clusters" / "duplicates.npy").unlink()
    steps = clusters.Clusters([signed.Store(work / "000"), signed.Store(work / "001")], work / "clusters")
    return steps, steps._partition()


def test_resume_in_the_middle_of_the_cluster_steps(big_repo, reference, tmp_path):
    steps, partitions = _cluster_steps_again(big_repo, tmp_path)
    steps._pairs(partitions[0])  # the partitions done, and the pairs of one
    result = run_cli("fetch", STORIES, WEB, "--dedup", "--source", str(big_repo), "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    assert _outputs(tmp_path) == reference


def test_resume_of_a_partition_step_stopped_part_way(big_repo, reference, tmp_path):
    _, partitions = _cluster_steps_again(big_repo, tmp_path)
    (partitions[0].parent / "done").unlink()  # stopped before its end: a partition file holds half its records
    with open(partitions[0], "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    result = run_cli("fetch", STORIES, WEB, "--dedup", "--source", str(big_repo), "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    assert _outputs(tmp_path) == reference


def test_cli_says_what_dedup_needs(repo, tmp_path):
    result = run_cli("fetch", STORIES, WEB, "--dedup", "--source", str(repo), "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "3 duplicate" in result.stderr and "signing" not in result.stderr.splitlines()[-1]


def test_decontaminated_rows_are_never_first_occurrences(repo, tmp_path):
    a, _ = _corpus(300, 120)
    benchmarks = tmp_path / "eval.jsonl"
    benchmarks.write_text(json.dumps({"text": a[7], "task_name": "mmlu"}) + "\n")
    results = fetch_all([STORIES, WEB], tmp_path, dedup=True, source_repo=str(repo), format="jsonl",
                        decontaminate=True, benchmarks=str(benchmarks))
    # stories row 7 and its copy, web row 10, are both contaminated: dropped as such, neither a duplicate
    listed = [json.loads(line)["row"] for line in _lines(tmp_path / WEB / "duplicates.jsonl")]
    assert listed == [20, 31]
    assert results[0].stats.skipped["contaminated"] == 1 and results[1].stats.skipped["contaminated"] == 1
    assert results[1].stats.skipped["duplicate"] == 2
