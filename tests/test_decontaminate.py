"""Decontamination: exact drops on built benchmarks, a superset of the recipe's, loading from files and the Hub."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import random
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fakehub import FakeHub, fake_hub_env
from smollm_corpus import hub as hub_module
from smollm_corpus.decontaminate import MAX_SAMPLES, Contamination, Decontaminator, normalize
from smollm_corpus.evalsets import DEFAULT_BENCHMARKS, Benchmarks, load_benchmarks
from smollm_corpus.errors import SourceError, UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_decontaminate as recipe  # noqa: E402  the recipe as the benchmark reproduces it

VOCABULARY = sorted({a + b + c for a in ("ka", "lo", "mi", "nu", "pe", "ri", "su", "ta", "vo", "ze")
                     for b in ("bar", "cen", "dil", "fom", "gut", "hes") for c in ("a", "o", "is", "um", "en")})


def phrase(seed: int, count: int) -> str:
    return " ".join(random.Random(seed).choices(VOCABULARY, k=count))


def changed(text: str, share: float, keep: range) -> str:
    """``text`` with ``share`` of its words replaced by words of no sample, none of them in ``keep``."""
    words = text.split()
    positions = [i for i in range(len(words)) if i not in keep]
    for i in random.Random(7).sample(positions, round(len(words) * share)):
        words[i] = f"other{i}"
    return " ".join(words)


def benchmarks(texts: list[str], tasks: list[str] | None = None) -> Benchmarks:
    return Benchmarks("built", "0" * 64, tuple(texts), tuple(tasks or ["unknown"] * len(texts)))


def recipe_any_order(documents: list[str], bench: Benchmarks, n: int = 10,
                     threshold: float = 0.5) -> dict[int, set[int]]:
    """Document -> every benchmark row the recipe can drop it for: its retrieval takes the first shared n-gram in
    set order, which depends on the hash seed, so any shared n-gram may be the one."""
    index, _, rows = recipe.recipe_index(list(bench.texts), list(bench.tasks), n)
    drops: dict[int, set[int]] = {}
    for doc, text in enumerate(documents):
        owners = {rows[index[g]] for g in recipe.recipe_ngrams(recipe.recipe_words(text), n) if g in index}
        found = {row for row in owners if recipe.recipe_ratio(text, bench.texts[row]) > threshold}
        if found:
            drops[doc] = found
    return drops


def samples_met(documents: list[str], bench: Benchmarks, n: int = 10) -> list[set[int]]:
    """Per document, the benchmark rows it shares an n-gram with."""
    samples = [recipe.recipe_ngrams(recipe.recipe_words(text), n) for text in bench.texts]
    return [{row for row, grams in enumerate(samples) if grams & recipe.recipe_ngrams(recipe.recipe_words(d), n)}
            for d in documents]


# -- which documents are dropped -----------------------------------------------------------------

S0, S1, S2 = phrase(0, 40), phrase(1, 40), phrase(2, 40)
STRONG = phrase(3, 20)  # also the start of the long sample after it, which the recipe's index keeps for its n-grams
ACCENTS = "Crème brûlée naïve café Ångström Ærøskøbing São Paulo Zürich " + phrase(5, 20)
WEAK, BEST = phrase(6, 100), phrase(7, 30)
SIGMA = "ΟΔΥΣΣΕΥΣ ΚΑΙ ΣΙΣΥΦΟΣ ΣΤΟΝ ΑΔΗ " + phrase(8, 12)
SAMPLES = [S0, S1, S2, STRONG, STRONG + " " + phrase(4, 200), ACCENTS, "a sample of only eight words in it",
           WEAK, BEST, SIGMA]
TASKS = ["mmlu", "arc_easy", "piqa", "hellaswag", "siqa", "winogrande", "openbookqa", "arc_challenge", "mmlu",
         "hellaswag"]
FILLER = "Plain words around it. " * 5
DOCUMENTS = [
    FILLER + S0 + FILLER,  # 0 verbatim
    FILLER + changed(S1, 0.3, range(0, 12)),  # 1 30% of the words changed
    changed(S2, 0.7, range(0, 12)) + FILLER,  # 2 70% changed
    "Before. " + STRONG + " After.",  # 3 the recipe compares it with the long sample only
    " ".join(WEAK.split()[40:50]) + ". " + BEST,  # 4 one n-gram of WEAK, all of BEST: set order decides for the recipe
    "CREME BRULEE NAIVE CAFE\u0301 A\u030angstro\u0308m ÆRØSKØBING sao paulo zurich " + phrase(5, 20).upper(),  # 5
    FILLER + "a sample of only eight words in it" + FILLER,  # 6 a sample with no n-gram
    " ".join(S0.split()[:9]),  # 7 nine words of a sample
    FILLER * 4,  # 8 clean
    "οδυσσευς και σισυφος στον αδη " + phrase(8, 12),  # 9 final sigmas written out
]
EXPECTED = {0: 0, 1: 1, 3: 3, 4: 8, 5: 5, 9: 9}


@pytest.fixture(scope="module")
def decontaminator() -> Decontaminator:
    return Decontaminator(benchmarks(SAMPLES, TASKS))


def test_copies_of_benchmark_samples_are_dropped_and_the_rest_kept(decontaminator):
    results = decontaminator.check(DOCUMENTS)
    assert {doc: r.sample for doc, r in enumerate(results) if r} == EXPECTED
    assert results[0] == Contamination("mmlu", 0, 1.0, " ".join(S0.split()[:10]))
    assert results[3].task == "hellaswag" and results[3].ratio == 1.0
    assert results[5].ngram == "creme brulee naive cafe angstrom ærøskøbing sao paulo zurich " + phrase(5, 1)
    assert 0.5 < results[1].ratio < 0.9
    assert results[4].ratio == 1.0 and results[4].ngram == " ".join(BEST.split()[:10])


def test_drops_are_a_superset_of_the_recipe_in_any_set_order_and_equal_where_one_sample_is_met(decontaminator):
    bench = decontaminator.benchmarks
    ours = {doc for doc, r in enumerate(decontaminator.check(DOCUMENTS)) if r}
    theirs = recipe_any_order(DOCUMENTS, bench)
    assert set(theirs) == {0, 1, 4, 5, 9}  # the recipe misses 3: its index sends it to the long sample
    assert ours >= set(theirs) and ours >= set(recipe.recipe_drops(DOCUMENTS, list(bench.texts), list(bench.tasks)))
    for doc, met in enumerate(samples_met(DOCUMENTS, bench)):
        if len(met) == 1:
            assert (doc in ours) == (doc in theirs)


@pytest.mark.parametrize("n", [3, 10])
def test_random_overlaps_drop_a_superset_of_the_recipe(n):
    rng = random.Random(n)
    words = VOCABULARY[:40]
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 60))) for _ in range(60)]
    documents = []
    for _ in range(120):
        parts = [" ".join(rng.choices(words, k=rng.randint(0, 30)))]
        for text in rng.sample(texts, rng.randint(0, 3)):
            kept = text.split()
            for i in rng.sample(range(len(kept)), int(len(kept) * rng.random() * 0.8)):
                kept[i] = rng.choice(words)
            parts.append(" ".join(kept).upper() if rng.random() < 0.2 else " ".join(kept))
        documents.append(", ".join(parts))
    bench = benchmarks(texts)
    ours = Decontaminator(bench, ngram=n).check(documents)
    theirs = recipe_any_order(documents, bench, n)
    assert len(theirs) > 15
    for doc, (text, met) in enumerate(zip(documents, samples_met(documents, bench, n))):
        if doc in theirs and len(met) <= MAX_SAMPLES:
            assert ours[doc] is not None, doc
        if ours[doc] is not None:
            assert ours[doc].sample in met and ours[doc].ratio > 0.5
            assert ours[doc].ratio == recipe.recipe_ratio(text, texts[ours[doc].sample])
        if len(met) == 1:
            assert (ours[doc] is not None) == (doc in theirs)
    # with threshold 0 every candidate reports a ratio: the recipe's diff gives the same, to the last bit
    for doc, found in enumerate(Decontaminator(bench, ngram=n, threshold=0).check(documents)):
        if found is not None:
            assert found.ratio == recipe.recipe_ratio(documents[doc], texts[found.sample]) > 0


def test_an_ngram_shared_by_thousands_of_samples_costs_at_most_max_samples_comparisons(monkeypatch):
    from smollm_corpus import decontaminate

    template = "the following are multiple choice questions with answers about the subject of"
    texts = [f"{template} {phrase(100 + i, 30)}" for i in range(3000)]
    compared = []
    ratio = decontaminate._ratio
    monkeypatch.setattr(decontaminate, "_ratio", lambda a, b: compared.append(b) or ratio(a, b))
    d = Decontaminator(benchmarks(texts))
    assert d.check([f"Intro. {template} nothing else from them here at all."]) == [None]
    assert len(compared) == MAX_SAMPLES
    compared.clear()
    found = d.check([f"{texts[1234]} and more."])[0]
    assert (found.sample, found.ratio, len(compared)) == (1234, 1.0, 1)


def test_every_kind_of_character_is_normalised_as_the_recipe_does():
    rng = random.Random(0)
    chars = [chr(c) for c in rng.sample(range(0x80, 0x110000), 3000) if not 0xD800 <= c < 0xE000]
    chars += list("ΣσςİıßẞÅÆŒﬁ한국ǅⅫ²½٣\u0301\u0344\u0903\u09cb\u1d15e") + ["e\u0301", "\ud800"]
    documents = [" ".join(f"u{i}w{j} {c}z{j}{c}y {c.upper()}" for j in range(8)) for i, c in enumerate(chars)]
    assert all(normalize(d) == recipe.recipe_words(d) for d in documents)
    results = Decontaminator(benchmarks([" ".join(recipe.recipe_words(d)) for d in documents])).check(documents)
    assert [r.sample if r else None for r in results] == list(range(len(documents)))


def test_a_document_of_fewer_words_than_an_ngram_and_empty_batches():
    d = Decontaminator(benchmarks(["one two three four five six"]), ngram=6)
    assert d.check(["One two three four five six!", "one two three four five", ""]) == [
        Contamination("unknown", 0, 1.0, "one two three four five six"), None, None]
    assert d.check([]) == []


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_the_stage_reads_arrow_text_as_check_reads_python_strings(decontaminator, kind):
    texts = [None, *DOCUMENTS, "", SIGMA.upper() + " " + FILLER, *reversed(DOCUMENTS)]
    expected = decontaminator.check(["" if t is None else t for t in texts])
    column = pa.array(["earlier rows"] * 3 + texts, kind).slice(3)  # a slice: its bytes do not start at 0
    batch = pa.record_batch({"text": column, "row": pa.array(range(len(texts)))})
    kept, rows, skipped = decontaminator(batch, pa.array(range(100, 100 + len(texts)), pa.int64()))
    dropped = [i for i, c in enumerate(expected) if c is not None]
    assert len(dropped) == 2 * len(EXPECTED) + 1
    assert kept.column("row").to_pylist() == [r - 100 for r in rows.to_pylist()] == \
        [i for i in range(len(texts)) if i not in dropped]
    assert [(row, reason) for row, reason, _ in skipped] == [(100 + i, "contaminated") for i in dropped]
    assert [json.loads(detail)["sample"] for _, _, detail in skipped] == [expected[i].sample for i in dropped]


def test_threads_share_one_decontaminator():
    d = Decontaminator(benchmarks(SAMPLES, TASKS))
    expected = Decontaminator(benchmarks(SAMPLES, TASKS)).check(DOCUMENTS * 20)
    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, d.check(DOCUMENTS * 20))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results.values()) and len(results) == 4


def test_pickling_sends_the_samples_not_the_index(decontaminator):
    decontaminator.check(DOCUMENTS)
    data = pickle.dumps(decontaminator)
    assert len(data) < len(pickle.dumps(decontaminator.benchmarks)) + 200
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(pickle.loads(data).check, DOCUMENTS).result() == decontaminator.check(DOCUMENTS)


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="n-gram length must be at least 1"):
        Decontaminator(benchmarks(SAMPLES), ngram=0)
    with pytest.raises(UsageError, match=r"threshold must be in \[0, 1\)"):
        Decontaminator(benchmarks(SAMPLES), threshold=1)


# -- loading -------------------------------------------------------------------------------------

ROWS = {"text": ["first sample", "second sample", "third"], "task_name": ["mmlu", "piqa", "mmlu"]}


def write_jsonl(path: Path, rows: dict) -> Path:
    path.write_text("".join(json.dumps(dict(zip(rows, values))) + "\n" for values in zip(*rows.values())))
    return path


def test_parquet_and_jsonl_give_the_same_samples_and_digest(tmp_path):
    pq.write_table(pa.table(ROWS), tmp_path / "bench.parquet")
    from_parquet = load_benchmarks(str(tmp_path / "bench.parquet"))
    from_jsonl = load_benchmarks(str(write_jsonl(tmp_path / "bench.jsonl", ROWS)))
    assert from_parquet.texts == from_jsonl.texts == tuple(ROWS["text"])
    assert from_parquet.tasks == tuple(ROWS["task_name"]) and from_parquet.sha256 == from_jsonl.sha256
    other = load_benchmarks(str(write_jsonl(tmp_path / "other.jsonl", {"text": ["first sample"]})))
    assert other.tasks == ("unknown",) and other.sha256 != from_jsonl.sha256
    identity = Decontaminator(from_parquet).identity()
    assert identity == {"benchmarks": str(tmp_path / "bench.parquet"), "benchmarks_sha256": from_parquet.sha256,
                        "ngram": 10, "threshold": 0.5, "max_samples": MAX_SAMPLES}


def test_a_folder_is_read_as_its_train_split(tmp_path):
    (tmp_path / "split" / "data").mkdir(parents=True)
    pq.write_table(pa.table(ROWS), tmp_path / "split" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": ["a test row"]}), tmp_path / "split" / "data" / "test-00000-of-00001.parquet")
    assert load_benchmarks(str(tmp_path / "split")).texts == tuple(ROWS["text"])
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", {"text": ["from jsonl"]})
    pq.write_table(pa.table({"text": ["from parquet"]}), tmp_path / "mixed" / "b.parquet")
    assert load_benchmarks(str(tmp_path / "mixed")).texts == ("from jsonl", "from parquet")


def test_the_default_benchmarks_come_from_the_hub_once_then_from_the_cache(tmp_path, monkeypatch):
    (tmp_path / "repo" / "data").mkdir(parents=True)
    pq.write_table(pa.table(ROWS), tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    local = load_benchmarks(str(tmp_path / "repo"))
    with FakeHub(tmp_path / "repo", repo_id=DEFAULT_BENCHMARKS) as hub:
        blocked = fake_hub_env(monkeypatch, hub, tmp_path)
        loaded = load_benchmarks()
        assert (loaded.source, loaded.sha256, loaded.texts) == (DEFAULT_BENCHMARKS, local.sha256, local.texts)
        assert hub.downloaded_files() == ["data/train-00000-of-00001.parquet"]

        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        hub.clear_requests()
        assert load_benchmarks(DEFAULT_BENCHMARKS) == loaded
        assert hub.requests == [] and not blocked


def test_transient_hub_errors_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_module, "RETRY_BASE_SECONDS", 0.01)
    (tmp_path / "repo").mkdir()
    write_jsonl(tmp_path / "repo" / "train.jsonl", ROWS)
    with FakeHub(tmp_path / "repo", repo_id="acme/evals") as hub:
        fake_hub_env(monkeypatch, hub, tmp_path)
        hub.fail_next(2, 503, match="train.jsonl")
        assert load_benchmarks("acme/evals").texts == tuple(ROWS["text"])


@pytest.mark.parametrize(
    "ref, setup, message",
    [
        ("acme/evals", lambda hub, mp: setattr(hub, "repo_exists", False),
         "benchmarks 'acme/evals' are not a local file or folder, and the Hub has no dataset acme/evals (or it is "
         "private: set HF_TOKEN); give a Hub dataset id, a parquet or jsonl file, or a folder of them"),
        ("acme/evals", lambda hub, mp: mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True),
         "the benchmark dataset acme/evals is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE "
         "is set, or the network is down); unset HF_HUB_OFFLINE"),
        ("./missing.jsonl", None, "benchmark file or folder ./missing.jsonl does not exist; give a Hub dataset id"),
        ("acme/no-data", None, "acme/no-data has no parquet or jsonl files of a train split"),
    ],
)
def test_benchmarks_that_cannot_be_read_say_what_to_do(tmp_path, monkeypatch, ref, setup, message):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README.md").write_text("no data here\n")
    if ref == "acme/evals":
        write_jsonl(tmp_path / "repo" / "train.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)
    with FakeHub(tmp_path / "repo", repo_id=ref.strip("./")) as hub:
        blocked = fake_hub_env(monkeypatch, hub, tmp_path)
        if setup:
            setup(hub, monkeypatch)
        with pytest.raises(SourceError) as info:
            load_benchmarks(ref)
    assert message in str(info.value) and not blocked


def test_a_missing_text_column_is_named_with_its_file(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "task_name": ["mmlu"]}), tmp_path / "bench.parquet")
    with pytest.raises(SourceError, match=r"bench.parquet has no 'text' column \(it has question, task_name\); give"):
        load_benchmarks(str(tmp_path / "bench.parquet"))
    write_jsonl(tmp_path / "bench.jsonl", {"question": ["q"]})
    with pytest.raises(SourceError, match=r"row 1 of .*bench.jsonl has no 'text' string; give a Hub dataset id"):
        load_benchmarks(str(tmp_path / "bench.jsonl"))
    with pytest.raises(UsageError, match="are not a file, a folder or a Hub dataset id"):
        load_benchmarks("not a repo id")


def test_normalisation_is_the_recipes():
    text = "Ça s'écrit «naïve» — NAÏVE, na\u0308ive; ΣΟΦΟΣ İzmir ﬁne 3²"
    assert normalize(text) == recipe.recipe_words(text) == [
        "ca", "s", "ecrit", "naive", "naive", "naive", "σοφος", "izmir", "ﬁne", "3²"]
