"""--where end to end: only the rows a filter keeps are written, the others counted; bad filters stop before any download."""

import json

import datasets
import pytest

from conftest import run_cli
from smollm_corpus import fetch
from smollm_corpus.errors import OutputError, UsageError


def rows_of(mirror, subset):
    return list(datasets.load_dataset(str(mirror), subset, split="train"))


@pytest.mark.parametrize(("subset", "where", "keep"), [
    ("fineweb-edu-dedup", ["metadata.int_score >= 4", "metadata.language_score > 0.95"],
     lambda r: r["metadata"]["int_score"] >= 4 and r["metadata"]["language_score"] > 0.95),
    ("cosmopedia-v2", ["format == 'textbook' and audience in ('college_students', 'researchers')"],
     lambda r: r["format"] == "textbook" and r["audience"] in ("college_students", "researchers")),
    ("cosmopedia-v2", ["not (format == 'story') or token_length < 10"],
     lambda r: not r["format"] == "story" or r["token_length"] < 10),
])
@pytest.mark.parametrize("format", ["txt", "jsonl"])
def test_only_kept_rows_are_written_and_the_others_counted(mirror, tmp_path, subset, where, keep, format):
    result = fetch(subset, tmp_path, source_repo=str(mirror), where=where, format=format, num_proc=2)
    rows = rows_of(mirror, subset)
    kept = [r for r in rows if keep(r) and r["text"].strip()]
    if format == "txt":
        assert (tmp_path / subset / "input.txt").read_text() == "\n\n".join(r["text"] for r in kept)
    else:
        lines = (tmp_path / subset / "input.jsonl").read_text().splitlines()
        assert [json.loads(line)["text"] for line in lines] == [r["text"] for r in kept]
    filtered = sum(not keep(r) for r in rows)
    assert result.stats.skipped["filtered"] == filtered > 0
    assert result.stats.documents == len(kept) and result.stats.rows == len(rows)
    manifest = json.loads((tmp_path / subset / "manifest.json").read_text())
    assert manifest["where"] == where and manifest["skipped"]["filtered"] == filtered


def test_threads_and_processes_filter_alike(mirror, tmp_path):
    where = ["metadata.int_score == 3"]
    fetch("fineweb-edu-dedup", tmp_path / "threads", source_repo=str(mirror), where=where)  # the default: threads
    fetch("fineweb-edu-dedup", tmp_path / "procs", source_repo=str(mirror), where=where, max_bytes=1 << 40)  # processes
    a = (tmp_path / "threads" / "fineweb-edu-dedup" / "input.txt").read_bytes()
    assert a == (tmp_path / "procs" / "fineweb-edu-dedup" / "input.txt").read_bytes() and a.count(b"Document ") > 100


def test_a_bad_filter_exits_2_naming_the_problem_and_writes_nothing(mirror, tmp_path):
    result = run_cli("fetch", "fineweb-edu-dedup", "--source", str(mirror), "-o", str(tmp_path / "out"),
                     "--where", "metadata.int_scor >= 4")
    assert result.returncode == 2
    assert "unknown column 'metadata.int_scor'" in result.stderr and "metadata.int_score (int64)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_another_filter_is_another_fetch(mirror, tmp_path):
    fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), where=["token_length > 10"], limit=50)
    with pytest.raises(OutputError, match="differing: where"):
        fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), where=["token_length > 11"], limit=50)
    with pytest.raises(UsageError, match="cannot compare token_length"):
        fetch("cosmopedia-v2", tmp_path / "x", source_repo=str(mirror), where=["token_length > 'x'"])
