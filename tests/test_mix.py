"""mix: weights, budgets, seeded draws across whole datasets, interleaving, resumes, formats."""

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI, kill_when, run_cli
from mirror import build_mirror
from smollm_corpus import mix
from smollm_corpus.errors import UsageError

WEB, COSMO = "fineweb-edu-dedup", "cosmopedia-v2"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Row groups of 20 rows: a few dozen per dataset, over several files."""
    return build_mirror(tmp_path_factory.mktemp("mix_mirror"), {WEB: [200, 260, 240, 150], COSMO: [300, 250, 280]},
                        row_group_size=20)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "input.jsonl").read_text().splitlines()]


def _origin(line: dict) -> str:
    return COSMO if "prompt" in line else WEB


def _mix(repo, out, **kwargs):
    return mix({WEB: 0.7, COSMO: 0.3}, out, source_repo=str(repo), **{"documents": 300, "format": "jsonl", **kwargs})


def test_documents_are_shared_by_weight_and_interleaved_in_every_window(repo, tmp_path):
    result = _mix(repo, tmp_path)
    lines = _lines(tmp_path)
    assert len(lines) == 300 and Counter(map(_origin, lines)) == {WEB: 210, COSMO: 90}
    assert [(i["name"], i["documents"]) for i in result.inputs] == [(WEB, 210), (COSMO, 90)]
    assert [round(i["realised_share"], 6) for i in result.inputs] == [0.7, 0.3]
    origins = np.array([_origin(line) == WEB for line in lines])
    for width in (10, 30, 100):  # every window holds each input at its weight, within a document or two
        for start in range(0, 300 - width + 1):
            assert abs(origins[start:start + width].sum() - 0.7 * width) <= 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["mix"]["seed"] == 0 and manifest["documents"] == 300
    assert [i["name"] for i in manifest["inputs"]] == [WEB, COSMO]
    assert not (tmp_path / ".mix").exists()


def test_documents_are_drawn_from_across_each_dataset(repo, tmp_path):
    result = _mix(repo, tmp_path)
    for spec in result.inputs:
        files = {name for name, _, _ in spec["row_groups"]}
        assert len(files) >= 2, spec["name"]  # not a prefix: row groups of several files
    lines = _lines(tmp_path)
    ids = [int(line["text"].split()[1]) for line in lines if _origin(line) == WEB and line["text"].startswith("Document")]
    assert max(ids) > 400 and min(ids) < 400  # rows from the first and the last files
    # neighbours from one dataset rarely come from the same stretch of its file
    web = [i for i in ids]
    close = sum(1 for a, b in zip(web, web[1:]) if abs(a - b) < 20)
    assert close < len(web) // 4


def test_the_same_seed_gives_the_same_bytes_whatever_the_workers(repo, tmp_path):
    _mix(repo, tmp_path / "a", num_proc=1)
    _mix(repo, tmp_path / "b", num_proc=3)
    assert (tmp_path / "a" / "input.jsonl").read_bytes() == (tmp_path / "b" / "input.jsonl").read_bytes()
    _mix(repo, tmp_path / "c", seed=7)
    a, c = _lines(tmp_path / "a"), _lines(tmp_path / "c")
    assert a != c and Counter(map(_origin, a)) == Counter(map(_origin, c))


def test_a_too_small_input_is_refused_then_repeated_when_allowed(repo, tmp_path):
    with pytest.raises(UsageError, match=r"cosmopedia-v2 has 830 rows, fewer than the 840 documents of its share"):
        mix({WEB: 0.3, COSMO: 0.7}, tmp_path, source_repo=str(repo), documents=1200, format="jsonl")
    with pytest.raises(UsageError, match=r"cosmopedia-v2 holds 8\d\d documents in all, less than the 829 of its share"):
        mix({WEB: 0.3, COSMO: 0.7}, tmp_path / "b", source_repo=str(repo), documents=1185, format="jsonl")  # empty rows
    result = mix({WEB: 0.3, COSMO: 0.7}, tmp_path / "again", source_repo=str(repo), documents=1200, format="jsonl",
                 allow_repeat=True)
    assert [i["documents"] for i in result.inputs] == [360, 840]
    assert [i["draws"] for i in result.inputs] == [1, 2]
    lines = _lines(tmp_path / "again")
    assert len({line["text"] for line in lines if _origin(line) == COSMO}) < 840  # some drawn twice


def test_a_text_budget_is_met_within_one_document(repo, tmp_path):
    result = mix({WEB: 3, COSMO: 1}, tmp_path, source_repo=str(repo), bytes=40_000)
    largest = 200  # the mirror's documents hold under 200 bytes, but its long ones: none is drawn whole past the budget
    for spec, budget in zip(result.inputs, (30_000, 10_000)):
        assert budget - largest * 700 <= spec["bytes"] <= budget
    assert result.stats.bytes <= 40_000 + 2 * result.stats.documents


def test_token_budget_in_bin_shards(repo, tmp_path):
    import toytokenizer
    from mirror import text_for

    tok = toytokenizer.save(toytokenizer.train([text_for(WEB, i) for i in range(300)], 400), tmp_path / "tok")
    result = mix({WEB: 0.5, COSMO: 0.5}, tmp_path / "out", source_repo=str(repo), tokens=20_000, format="bin",
                 tokenizer=str(tok), val_tokens=1000)
    assert sum(i["tokens"] for i in result.inputs) == result.tokens <= 20_000
    for spec in result.inputs:
        assert 10_000 - 2000 <= spec["tokens"] <= 10_000
    shards = {p.name: p.stat().st_size for p in (tmp_path / "out").glob("*.bin")}
    assert set(shards) == {"mix_val_000000.bin", "mix_train_000001.bin"}  # validation first, then training
    assert (shards["mix_val_000000.bin"] - 1024) // 2 >= 1000  # llm.c's header, then uint16 ids


def test_options_that_do_not_apply_are_refused(repo, tmp_path):
    with pytest.raises(UsageError, match="one budget"):
        mix({WEB: 1}, tmp_path, source_repo=str(repo), documents=10, bytes=100)
    with pytest.raises(UsageError, match="token format"):
        mix({WEB: 1}, tmp_path, source_repo=str(repo), tokens=10)
    result = run_cli("mix", "fineweb-edu-dedup=x", "--documents", "5", "-o", str(tmp_path))
    assert result.returncode == 2 and "NAME=WEIGHT" in result.stderr


def test_cli_mix_then_kill_9_and_resume_gives_the_same_bytes(repo, tmp_path):
    args = ["mix", f"{WEB}=0.7", f"{COSMO}=0.3", "--documents", "6000", "--allow-repeat", "--format", "jsonl",
            "--source", str(repo), "--seed", "3"]
    reference = run_cli(*args, "-o", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    assert "share 0.7000 (asked 0.7000)" in reference.stderr
    out = tmp_path / "killed"
    sampled = lambda: bool(list(out.glob(".mix/*/*/.sample/*.info")))  # noqa: E731
    partial = out / "input.jsonl.incomplete"
    for ready in (sampled, lambda: partial.exists() and partial.stat().st_size > 0):
        proc = subprocess.Popen([CLI, *args, "-o", str(out), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kill_when(proc, ready)
        assert proc.returncode == -9
    again = run_cli(*args, "-o", str(out), "-q")
    assert again.returncode == 0, again.stderr
    assert (out / "input.jsonl").read_bytes() == (tmp_path / "ref" / "input.jsonl").read_bytes()


def test_nanogpt_files_and_the_smollm_preset(repo, tmp_path):
    import pickle

    import toytokenizer
    from mirror import text_for
    from smollm_corpus.mixture import parse_inputs, shares

    assert parse_inputs([], "smollm") == [(WEB, 0.70), (COSMO, 0.15), ("python-edu", 0.08)]
    assert shares(1000, [0.70, 0.15, 0.08]) == [753, 161, 86]  # normalised, whole, adding up
    tok = toytokenizer.save(toytokenizer.train([text_for(WEB, i) for i in range(300)], 400), tmp_path / "tok")
    result = mix({WEB: 0.5, COSMO: 0.5}, tmp_path / "out", source_repo=str(repo), documents=400, format="nanogpt",
                 tokenizer=str(tok))
    out = tmp_path / "out"
    assert (out / "val.bin").stat().st_size > 0 and (out / "train.bin").stat().st_size > (out / "val.bin").stat().st_size
    assert pickle.loads((out / "meta.pkl").read_bytes())["vocab_size"] == 400
    assert result.tokens * 2 == (out / "val.bin").stat().st_size + (out / "train.bin").stat().st_size


def _lsh_pairs(texts: list[str]) -> int:
    """Pairs of documents the MinHash method calls near-duplicates (one of 14 buckets equal)."""
    from smollm_corpus import clusters, minhash

    sigs = minhash.Signer().sign(texts)
    signed = sigs[:, 0] != minhash.UNSIGNED
    high, low = clusters.bucket_keys(sigs[signed])
    keys = Counter((b, int(h), int(lo_)) for row_h, row_l in zip(high, low) for b, (h, lo_) in enumerate(zip(row_h, row_l)))
    return sum(n - 1 for n in keys.values() if n > 1)


def test_dedup_leaves_no_near_duplicates_across_the_inputs(tmp_path):
    from test_dedup import STORIES, WEB as WEB_SAMPLES, _repo

    repo = _repo(tmp_path / "repo", 300, 120, 3)
    both = {STORIES: 280, WEB_SAMPLES: 100}
    mix(both, tmp_path / "plain", source_repo=str(repo), documents=380, format="jsonl")
    texts = [line["text"] for line in _lines(tmp_path / "plain")]
    assert _lsh_pairs(texts) > 0  # the planted copies, drawn together
    result = mix(both, tmp_path / "dedup", source_repo=str(repo), documents=380, format="jsonl", dedup=True)
    texts = [line["text"] for line in _lines(tmp_path / "dedup")]
    assert len(texts) == 380 and [i["documents"] for i in result.inputs] == [280, 100]
    assert _lsh_pairs(texts) == 0
    listed = [json.loads(line) for line in (tmp_path / "dedup" / "duplicates.jsonl").read_text().splitlines()]
    assert len(listed) >= 3 and {d["dataset"] for d in listed} == {STORIES, WEB_SAMPLES}
    assert sum(i["duplicates"] for i in result.inputs) >= 1
    with pytest.raises(UsageError, match="allow-repeat"):
        mix(both, tmp_path / "x", source_repo=str(repo), documents=380, dedup=True, allow_repeat=True)


def test_a_rerun_does_nothing_and_other_options_need_overwrite(repo, tmp_path):
    from smollm_corpus.errors import OutputError

    first = _mix(repo, tmp_path)
    again = _mix(repo, tmp_path)
    assert again.already_complete and again.stats.documents == first.stats.documents == 300
    assert [i["documents"] for i in again.inputs] == [210, 90]
    with pytest.raises(OutputError, match="other options .*mix"):
        _mix(repo, tmp_path, seed=5)
    changed = _mix(repo, tmp_path, seed=5, overwrite=True)
    assert not changed.already_complete and _lines(tmp_path) != []


def test_filters_and_decontamination_apply_to_each_input(repo, tmp_path):
    from mirror import text_for

    benchmarks = tmp_path / "eval.jsonl"
    # a third of fineweb-edu-dedup's rows copy a benchmark sample (not its 130 KB documents of one sentence: a
    # sample like that makes the recipe's diff take minutes for each document that shares it)
    copied = [text_for(WEB, i) for i in range(0, 850, 3) if len(text_for(WEB, i)) < 10_000]
    benchmarks.write_text("".join(json.dumps({"text": t, "task_name": "mmlu"}) + "\n" for t in copied if t.strip()))
    result = _mix(repo, tmp_path / "out", where=[f"{COSMO}: format != 'story'", "text is not null"],
                  decontaminate=True, benchmarks=str(benchmarks))
    lines = _lines(tmp_path / "out")
    assert len(lines) == 300 and Counter(map(_origin, lines)) == {WEB: 210, COSMO: 90}
    assert all(line["format"] != "story" for line in lines if _origin(line) == COSMO)
    assert not {line["text"] for line in lines} & set(copied)
    assert [i["documents"] for i in result.inputs] == [210, 90]


def test_edge_cases_are_refused_with_advice(repo, tmp_path):
    from smollm_corpus.mixture import filters_for

    with pytest.raises(UsageError, match="cosmopedia-v2 would get nothing of a budget of 10 documents"):
        mix({WEB: 0.99, COSMO: 0.01}, tmp_path, source_repo=str(repo), documents=10)
    scoped = ["hf:me/data: score > 3", "cosmopedia-v2: format == 'story'", "text is not null"]
    names = ["hf:me/data", "cosmopedia-v2"]
    assert filters_for("hf:me/data", scoped, names) == ["score > 3", "text is not null"]
    assert filters_for("cosmopedia-v2", scoped, names) == ["format == 'story'", "text is not null"]
    with pytest.raises(UsageError, match="no document that fits"):  # every row filtered out, drawn again: none either
        mix({WEB: 0.5, COSMO: 0.5}, tmp_path / "none", source_repo=str(repo), documents=100, allow_repeat=True,
            where=[f"{COSMO}: format == 'nothing'"])


def test_overwrite_leaves_no_token_file_of_the_mix_it_replaces(repo, tmp_path):
    import toytokenizer
    from mirror import text_for

    tok = toytokenizer.save(toytokenizer.train([text_for(WEB, i) for i in range(300)], 400), tmp_path / "tok")
    options = {"source_repo": str(repo), "format": "bin", "tokenizer": str(tok), "val_tokens": 0, "shard_tokens": 2000}
    mix({WEB: 0.5, COSMO: 0.5}, tmp_path / "out", tokens=20_000, **options)
    many = sorted(p.name for p in (tmp_path / "out").glob("*.bin"))
    mix({WEB: 0.5, COSMO: 0.5}, tmp_path / "out", tokens=5_000, overwrite=True, **options)
    few = sorted(p.name for p in (tmp_path / "out").glob("*.bin"))
    assert len(many) > len(few) >= 2 and set(few) < set(many)
