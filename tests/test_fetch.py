"""fetch() end to end on a local mirror, checked against what datasets.load_dataset reads."""

import hashlib
import json
import shutil
from pathlib import Path

import datasets
import pytest

from smollm_corpus import fetch
from smollm_corpus.errors import OutputError, SourceError, UsageError


def expected_text(mirror: Path, subset: str, render=lambda row: row["text"], separator="\n\n", limit=None) -> bytes:
    """The output as defined: rendered rows in dataset order, empty ones skipped, joined by the separator."""
    ds = datasets.load_dataset(str(mirror), subset, split="train")
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    docs = [render(row) for row in rows]
    return separator.join(d for d in docs if d.strip()).encode()


@pytest.mark.parametrize("subset", ["cosmopedia-v2", "fineweb-edu-dedup"])
def test_output_is_every_document_in_dataset_order(mirror, tmp_path, subset):
    result = fetch(subset, tmp_path, source_repo=str(mirror), num_proc=2)
    output = tmp_path / subset / "input.txt"
    assert output.read_bytes() == expected_text(mirror, subset)
    manifest = json.loads((tmp_path / subset / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert manifest["bytes"] == output.stat().st_size == result.stats.bytes
    assert manifest["rows"] == len(datasets.load_dataset(str(mirror), subset, split="train"))
    assert manifest["skipped"]["empty"] == manifest["rows"] - manifest["documents"] > 0
    assert sorted(p.name for p in (tmp_path / subset).iterdir()) == [".lock", "input.txt", "manifest.json"]


def test_nanogpt_layout_matches_the_prefixed_script_format(mirror, tmp_path):
    fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), template="nanogpt", limit=50)
    expected = expected_text(
        mirror, "cosmopedia-v2", lambda r: f"#U:\n{r['prompt'].strip()}\n#B:\n{r['text'].strip()}", "\n", limit=50
    )
    assert (tmp_path / "cosmopedia-v2" / "input.txt").read_bytes() == expected


def test_custom_template_reaches_into_structs_and_interprets_escapes(mirror, tmp_path):
    fetch("fineweb-edu-dedup", tmp_path, source_repo=str(mirror), template=r"{metadata.url}\t{id}\n{text}",
          separator=r"\n---\n", limit=300)
    expected = expected_text(mirror, "fineweb-edu-dedup",
                             lambda r: f"{r['metadata']['url']}\t{r['id']}\n{r['text']}", "\n---\n", limit=300)
    assert (tmp_path / "fineweb-edu-dedup" / "input.txt").read_bytes() == expected


def test_jsonl_holds_every_column_with_text_rendered(mirror, tmp_path):
    fetch("fineweb-edu-dedup", tmp_path, source_repo=str(mirror), format="jsonl", limit=120)
    lines = (tmp_path / "fineweb-edu-dedup" / "input.jsonl").read_text().splitlines()
    ds = datasets.load_dataset(str(mirror), "fineweb-edu-dedup", split="train").select(range(120))
    rows = [r for r in ds if r["text"].strip()]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        obj = json.loads(line)
        assert obj["text"] == row["text"] and obj["id"] == row["id"]
        assert obj["metadata"]["date"] == row["metadata"]["date"].isoformat()
        assert set(obj["metadata"]) == set(row["metadata"])


def test_limit_reads_no_more_than_the_files_it_needs(mirror, tmp_path):
    # Files past the first are replaced by garbage: reading one would fail the run.
    copy = tmp_path / "mirror"
    shutil.copytree(mirror, copy)
    for f in sorted((copy / "cosmopedia-v2").glob("train-*.parquet"))[1:]:
        f.write_bytes(b"not parquet")
    fetch("cosmopedia-v2", tmp_path / "out", source_repo=str(copy), limit=100)
    assert (tmp_path / "out" / "cosmopedia-v2" / "input.txt").read_bytes() == expected_text(mirror, "cosmopedia-v2", limit=100)


def test_limit_spanning_files_and_zero(mirror, tmp_path):
    fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=555)
    assert (tmp_path / "cosmopedia-v2" / "input.txt").read_bytes() == expected_text(mirror, "cosmopedia-v2", limit=555)
    result = fetch("cosmopedia-v2", tmp_path / "zero", source_repo=str(mirror), limit=0)
    assert result.stats.rows == 0 and (tmp_path / "zero" / "cosmopedia-v2" / "input.txt").read_bytes() == b""


@pytest.mark.parametrize("max_bytes", [1, 150, 5_000, 200_000])
def test_max_bytes_stops_at_the_last_whole_document(mirror, tmp_path, max_bytes):
    full = expected_text(mirror, "fineweb-edu-dedup")
    result = fetch("fineweb-edu-dedup", tmp_path, source_repo=str(mirror), max_bytes=max_bytes, num_proc=2)
    out = (tmp_path / "fineweb-edu-dedup" / "input.txt").read_bytes()
    assert len(out) <= max_bytes and full.startswith(out)
    docs = full.split(b"\n\n")
    whole = b""
    for doc in docs:  # the longest prefix of whole documents that fits
        candidate = whole + (b"\n\n" if whole else b"") + doc
        if len(candidate) > max_bytes:
            break
        whole = candidate
    assert out == whole
    assert result.stats.documents == (out.count(b"\n\n") + 1 if out else 0)


def test_num_proc_does_not_change_a_byte(mirror, tmp_path):
    for n in (1, 4):
        fetch("fineweb-edu-dedup", tmp_path / str(n), source_repo=str(mirror), num_proc=n)
    assert (tmp_path / "1/fineweb-edu-dedup/input.txt").read_bytes() == (tmp_path / "4/fineweb-edu-dedup/input.txt").read_bytes()


def test_rerun_of_complete_fetch_does_nothing(mirror, tmp_path):
    first = fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=10)
    again = fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=10)
    assert not first.already_complete and again.already_complete
    assert again.stats == first.stats


def test_rerun_with_other_options_refuses_and_keeps_the_output(mirror, tmp_path):
    fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=10)
    before = (tmp_path / "cosmopedia-v2" / "input.txt").read_bytes()
    with pytest.raises(OutputError, match=r"differing: limit\); add --overwrite to replace it, or choose another --out-dir"):
        fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=11)
    assert (tmp_path / "cosmopedia-v2" / "input.txt").read_bytes() == before
    fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=11, overwrite=True)
    assert (tmp_path / "cosmopedia-v2" / "input.txt").read_bytes() == expected_text(mirror, "cosmopedia-v2", limit=11)


def test_unknown_column_writes_nothing(mirror, tmp_path):
    with pytest.raises(UsageError, match=r"\{nope\} names no column of cosmopedia-v2; columns: prompt, text"):
        fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), template="{nope}")
    assert not (tmp_path / "cosmopedia-v2").exists()


def test_source_folder_missing_or_misshapen_says_what_was_expected(mirror, tmp_path):
    with pytest.raises(SourceError, match="does not exist; expected a folder laid out like the Hub repository"):
        fetch("cosmopedia-v2", tmp_path, source_repo=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="has no README.md; expected a folder laid out like the Hub repository"):
        fetch("cosmopedia-v2", tmp_path, source_repo=str(tmp_path / "empty"))
    copy = tmp_path / "copy"
    shutil.copytree(mirror, copy)
    shutil.rmtree(copy / "python-edu")
    with pytest.raises(SourceError, match="python-edu"):
        fetch("python-edu", tmp_path, source_repo=str(copy))


def test_damaged_parquet_file_is_named_with_what_to_do(mirror, tmp_path):
    copy = tmp_path / "mirror"
    shutil.copytree(mirror, copy)
    damaged = sorted((copy / "cosmopedia-v2").glob("train-*.parquet"))[1]
    damaged.write_bytes(damaged.read_bytes()[: 1000])
    with pytest.raises(SourceError, match=r"cannot read cosmopedia-v2/train-00001-of-00003.parquet at .*damaged or incomplete"):
        fetch("cosmopedia-v2", tmp_path / "out", source_repo=str(copy))


def test_nanogpt_and_the_same_template_unstripped_are_different_fetches(mirror, tmp_path):
    fetch("fineweb-edu-dedup", tmp_path, source_repo=str(mirror), template="nanogpt", limit=20)
    with pytest.raises(OutputError, match=r"differing: strip\)"):
        fetch("fineweb-edu-dedup", tmp_path, source_repo=str(mirror), template=r"#T:\n{text}", separator=r"\n", limit=20)


def test_progress_never_runs_backwards_or_past_the_total(big_mirror, tmp_path):
    seen = []
    result = fetch("fineweb-edu-dedup", tmp_path, source_repo=str(big_mirror), num_proc=2,
                   progress=lambda p: seen.append((p.rows, p.total_rows)))
    rows = [r for r, _ in seen]
    assert rows == sorted(rows) and len(set(rows)) > 3
    assert all(r <= total for r, total in seen)
    assert rows[-1] == seen[-1][1] == result.stats.rows
