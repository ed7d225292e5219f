"""--decontaminate end to end: documents that copy a benchmark sample are dropped, listed and counted, in every format."""

import json

import datasets
import pytest

from conftest import run_cli
from mirror import text_for
from smollm_corpus import fetch
from smollm_corpus.errors import OutputError

SUBSET = "cosmopedia-v2"
#: mirror rows whose text the benchmark set copies, and the task of each copy
COPIED = {10: "mmlu", 20: "arc_easy", 400: "piqa", 601: "mmlu"}


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    path = tmp_path_factory.mktemp("benchmarks") / "eval.jsonl"
    lines = [{"text": text_for(SUBSET, row), "task_name": task} for row, task in COPIED.items()]
    lines.append({"text": "Which planet is closest to the sun, and how long is one of its years in days?",
                  "task_name": "boolq"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_copies_are_dropped_listed_and_counted(mirror, tmp_path, benchmarks):
    result = fetch(SUBSET, tmp_path, source_repo=str(mirror), decontaminate=True, benchmarks=str(benchmarks))
    rows = list(datasets.load_dataset(str(mirror), SUBSET, split="train"))
    kept = [r["text"] for i, r in enumerate(rows) if i not in COPIED and r["text"].strip()]
    assert (tmp_path / SUBSET / "input.txt").read_text() == "\n\n".join(kept)
    assert result.stats.skipped["contaminated"] == len(COPIED)
    listed = [json.loads(line) for line in (tmp_path / SUBSET / "decontamination.jsonl").read_text().splitlines()]
    files = sorted(p.name for p in (mirror / SUBSET).glob("*.parquet"))
    first_rows = {files[0]: 0, files[1]: 300, files[2]: 550}  # the mirror's files hold 300, 250, 280 rows
    assert [first_rows[c["file"].rsplit("/", 1)[1]] + c["row"] for c in listed] == list(COPIED)
    assert [c["task"] for c in listed] == list(COPIED.values()) and [c["sample"] for c in listed] == [0, 1, 2, 3]
    assert all(c["ratio"] == 1.0 and c["ngram"].startswith("document ") for c in listed)
    manifest = json.loads((tmp_path / SUBSET / "manifest.json").read_text())
    assert manifest["contaminated_by_task"] == {"arc_easy": 1, "mmlu": 2, "piqa": 1}
    assert manifest["decontaminate"]["ngram"] == 10 and manifest["decontaminate"]["threshold"] == 0.5


def test_filters_apply_first(mirror, tmp_path, benchmarks):
    result = fetch(SUBSET, tmp_path, source_repo=str(mirror), decontaminate=True, benchmarks=str(benchmarks),
                   where=["audience != 'general'"])  # row 20 (20 % 3 == 2) is 'general': filtered, not contaminated
    assert result.stats.skipped["contaminated"] == len(COPIED) - 1
    assert [c["task"] for c in json.loads((tmp_path / SUBSET / "manifest.json").read_text())["contaminated"]] == \
        ["mmlu", "piqa", "mmlu"]


def test_token_formats_drop_the_same_documents(mirror, tmp_path, benchmarks):
    import toytokenizer

    tok = toytokenizer.save(toytokenizer.train([text_for(SUBSET, i) for i in range(300)], 400), tmp_path / "tok")
    result = fetch(SUBSET, tmp_path, source_repo=str(mirror), decontaminate=True, benchmarks=str(benchmarks),
                   format="nanogpt", tokenizer=str(tok))
    plain = fetch(SUBSET, tmp_path / "plain", source_repo=str(mirror), format="nanogpt", tokenizer=str(tok))
    assert result.stats.documents == plain.stats.documents - len(COPIED)
    assert (tmp_path / SUBSET / "decontamination.jsonl").read_text().count("\n") == len(COPIED)


def test_other_benchmarks_or_threshold_are_another_fetch(mirror, tmp_path, benchmarks):
    fetch(SUBSET, tmp_path, source_repo=str(mirror), decontaminate=True, benchmarks=str(benchmarks), limit=30)
    with pytest.raises(OutputError, match="differing: decontaminate"):
        fetch(SUBSET, tmp_path, source_repo=str(mirror), decontaminate=True, benchmarks=str(benchmarks), limit=30,
              decontam_threshold=0.8)


def test_decontamination_options_need_decontaminate(mirror, tmp_path, benchmarks):
    result = run_cli("fetch", SUBSET, "--source", str(mirror), "-o", str(tmp_path), "--benchmarks", str(benchmarks))
    assert result.returncode == 2 and "--benchmarks apply with --decontaminate only" in result.stderr
