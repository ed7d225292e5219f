"""Names beyond the SmolLM-Corpus: Cosmopedia v0.1 per config, cosmopedia-100k, and hf:OWNER/NAME[:CONFIG],
from a fake Hub serving each repository on 127.0.0.1 and from local folders, checked against datasets.load_dataset."""

import json
from pathlib import Path

import datasets
import pytest

import toytokenizer
from fakehub import FakeHub, fake_hub_env
from mirror import COSMOPEDIA_CONFIGS, build_cosmopedia, build_cosmopedia_100k, build_repo, generic_rows
from smollm_corpus import fetch

from conftest import run_cli

GENERIC_SHA = "1" * 40


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    """Local folders laid out like each Hub repository, by repository id."""
    root = tmp_path_factory.mktemp("repos")
    return {
        "HuggingFaceTB/cosmopedia": build_cosmopedia(root / "cosmopedia"),
        "HuggingFaceTB/cosmopedia-100k": build_cosmopedia_100k(root / "cosmopedia-100k"),
        # a `default` config beside another, two splits, no dataset_info: the schema comes from the files
        "acme/generic": build_repo(root / "generic", {
            "default": {"train": [generic_rows("g", 0, 60), generic_rows("g", 60, 90)], "test": [generic_rows("t", 0, 25)]},
            "other": {"train": [generic_rows("o", 0, 10)]},
        }, dataset_info=False),
        "acme/multi": build_repo(root / "multi", {c: {"train": [generic_rows(c, 0, 20)]} for c in ("en", "fr")}),
        "acme/qa": build_repo(root / "qa", {"default": {"train": [generic_rows("qa", 0, 30, text=False)]}}),
        "acme/lines": build_repo(root / "lines", {"default": {"train": [generic_rows("j", 0, 30)]}}, suffix="jsonl"),
        "acme/scripted": _scripted(root / "scripted"),
    }


def _scripted(root: Path) -> Path:
    """A repository defined by a loading script, as older Hub datasets are."""
    root.mkdir()
    (root / "README.md").write_text("---\nlicense: mit\n---\n\n# Scripted\n")
    (root / "scripted.py").write_text("import datasets\n\n\nclass Scripted(datasets.GeneratorBasedBuilder):\n    pass\n")
    return root


@pytest.fixture
def hub(mirror, repos):
    with FakeHub(mirror) as hub:
        for repo_id, root in repos.items():
            hub.add_repo(root, repo_id, sha=GENERIC_SHA)
        yield hub


def hub_cli(hub, tmp_path, *args):
    return run_cli(*args, "-o", str(tmp_path / "out"), env=hub.env(tmp_path / "hf"))


def expected_text(root: Path, config: str, split: str = "train", render=lambda row: row["text"], separator="\n\n") -> bytes:
    """Rendered rows as datasets.load_dataset reads them, empty ones skipped, joined by the separator."""
    docs = [render(row) for row in datasets.load_dataset(str(root), config, split=split)]
    return separator.join(d for d in docs if d.strip()).encode()


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_list_shows_the_subsets_then_cosmopedia_then_how_to_name_any_hub_dataset():
    result = run_cli("list")
    assert result.returncode == 0
    out = result.stdout
    positions = [out.index(s) for s in ("cosmopedia-v2\n", "fineweb-edu-dedup\n", "Cosmopedia v0.1 (HuggingFaceTB/cosmopedia)",
                                        "cosmopedia/auto_math_text\n", "cosmopedia/wikihow\n", "cosmopedia-100k",
                                        "hf:OWNER/NAME[:CONFIG]")]
    assert positions == sorted(positions)
    assert "columns:   prompt, text, text_token_length, format, audience, seed_data (dataset card)" in out
    assert "rows:      about 100k (dataset card)" in out
    assert "output:    OUT_DIR/hf/OWNER/NAME/CONFIG/" in out
    assert "all eight: fetch cosmopedia --all-configs" in out


def test_cosmopedia_config_comes_from_its_own_repository(hub, repos, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "cosmopedia/stories", "-q")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "cosmopedia" / "stories"
    assert (folder / "input.txt").read_bytes() == expected_text(repos["HuggingFaceTB/cosmopedia"], "stories")
    m = manifest(folder)
    assert (m["subset"], m["source"], m["split"], m["commit"]) == ("cosmopedia/stories", "HuggingFaceTB/cosmopedia",
                                                                   "train", GENERIC_SHA)
    assert all(f.startswith("data/stories/") for f in hub.downloaded_files() if f.endswith(".parquet"))


def test_cosmopedia_100k_and_the_nanogpt_preset(hub, repos, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "cosmopedia-100k", "--template", "nanogpt", "-q")
    assert result.returncode == 0, result.stderr
    render = lambda row: f"#U:\n{row['prompt'].strip()}\n#B:\n{row['text'].strip()}"  # noqa: E731
    expected = expected_text(repos["HuggingFaceTB/cosmopedia-100k"], "default", render=render, separator="\n")
    assert (tmp_path / "out" / "cosmopedia-100k" / "input.txt").read_bytes() == expected


def test_all_configs_of_cosmopedia_each_into_its_own_folder_from_a_local_copy(repos, tmp_path):
    root = repos["HuggingFaceTB/cosmopedia"]
    result = run_cli("fetch", "cosmopedia", "--all-configs", "--source", str(root), "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "cosmopedia").iterdir()) == sorted(COSMOPEDIA_CONFIGS)
    for config in COSMOPEDIA_CONFIGS:
        assert (tmp_path / "cosmopedia" / config / "input.txt").read_bytes() == expected_text(root, config)


def test_cosmopedia_without_a_config_asks_for_one():
    result = run_cli("fetch", "cosmopedia")
    assert result.returncode == 2
    assert "cosmopedia stands for cosmopedia/auto_math_text," in result.stderr
    assert "name one, or add --all-configs" in result.stderr


def test_hub_dataset_reads_its_default_config_into_hf_owner_name_config(hub, repos, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/generic", "-q")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "hf" / "acme" / "generic" / "default"
    assert (folder / "input.txt").read_bytes() == expected_text(repos["acme/generic"], "default")
    m = manifest(folder)
    assert (m["subset"], m["source"], m["rows"]) == ("hf:acme/generic:default", "acme/generic", 90)


def test_split_is_chosen_and_is_part_of_the_fetch_identity(hub, repos, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/generic:default", "--split", "test", "-q")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "hf" / "acme" / "generic" / "default"
    assert (folder / "input.txt").read_bytes() == expected_text(repos["acme/generic"], "default", "test")
    assert manifest(folder)["split"] == "test"
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/generic:default")
    assert result.returncode == 1
    assert "holds a fetch made with other options (differing: split)" in result.stderr


def test_unknown_split_exits_2_listing_the_splits(hub, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/generic", "--split", "validation")
    assert result.returncode == 2
    assert "acme/generic config 'default' has no split 'validation'; its splits: train, test; choose one with --split" in result.stderr
    assert not (tmp_path / "out").exists()


def test_several_configs_and_none_named_default_exits_2_listing_them(hub, repos, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/multi")
    assert result.returncode == 2
    assert ("acme/multi has several configs and none named 'default'; name one, as in hf:acme/multi:en, "
            "or add --all-configs to fetch each; configs: en, fr") in result.stderr
    assert not (tmp_path / "out").exists()
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/multi", "--all-configs", "--template", "nanogpt", "-q")
    assert result.returncode == 0, result.stderr
    for config in ("en", "fr"):
        expected = expected_text(repos["acme/multi"], config, render=lambda row: row["text"].strip(), separator="\n")
        assert (tmp_path / "out" / "hf" / "acme" / "multi" / config / "input.txt").read_bytes() == expected


def test_dataset_without_a_text_column_asks_for_a_template(hub, repos, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/qa")
    assert result.returncode == 2
    assert ("hf:acme/qa:default has no {text} column for the default template; pass --template with placeholders "
            "for the columns to write, e.g. --template '{question}'; columns: question, answer") in result.stderr
    assert not (tmp_path / "out").exists()
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/qa", "--template", "Q: {question}\\nA: {answer}", "-q")
    assert result.returncode == 0, result.stderr
    render = lambda row: f"Q: {row['question']}\nA: {row['answer']}"  # noqa: E731
    assert (tmp_path / "out" / "hf" / "acme" / "qa" / "default" / "input.txt").read_bytes() == expected_text(
        repos["acme/qa"], "default", render=render)


@pytest.mark.parametrize("where", ["hub", "local"])
def test_dataset_whose_files_are_not_parquet_exits_1_naming_them_and_writes_nothing(hub, repos, tmp_path, where):
    source = () if where == "hub" else ("--source", str(repos["acme/lines"]))
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/lines", *source)
    assert result.returncode == 1
    assert "config 'default' holds json data files, not parquet (e.g. " in result.stderr
    assert "data/default/train-00000-of-00001.jsonl); smollm-corpus reads parquet files only" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["hub", "local"])
def test_dataset_defined_by_a_loading_script_exits_1_saying_so_and_writes_nothing(hub, repos, tmp_path, where):
    source = () if where == "hub" else ("--source", str(repos["acme/scripted"]))
    result = hub_cli(hub, tmp_path, "fetch", "hf:acme/scripted", *source)
    assert result.returncode == 1
    assert "is defined by a loading script, not by parquet data files (" in result.stderr
    assert "found scripted.py); smollm-corpus reads parquet files only: convert" in result.stderr
    assert not (tmp_path / "out").exists()


def test_local_source_works_for_hub_names_and_matches_the_hub(hub, repos, tmp_path):
    assert hub_cli(hub, tmp_path, "fetch", "hf:acme/generic:other", "-q").returncode == 0
    local = fetch("hf:acme/generic:other", tmp_path / "local", source_repo=str(repos["acme/generic"]))
    assert local.output == tmp_path / "local" / "hf" / "acme" / "generic" / "other" / "input.txt"
    assert local.output.read_bytes() == (tmp_path / "out" / "hf" / "acme" / "generic" / "other" / "input.txt").read_bytes()


def test_badly_formed_hub_name_is_a_usage_error():
    result = run_cli("fetch", "hf:acme")
    assert result.returncode == 2
    assert "'hf:acme' is not a Hub dataset name; write it as hf:OWNER/NAME or hf:OWNER/NAME:CONFIG" in result.stderr


def test_hub_name_without_config_reaches_only_the_fake_hub(hub, repos, tmp_path, monkeypatch):
    blocked = fake_hub_env(monkeypatch, hub, tmp_path)
    result = fetch("hf:acme/generic", tmp_path / "out", limit=5)
    assert result.subset == "hf:acme/generic:default" and result.stats.rows == 5
    assert not blocked


def test_token_shards_are_named_after_the_folder(repos, tmp_path):
    tokenizer = toytokenizer.save(toytokenizer.train(["Document 1 of cosmopedia/stories: abc"] * 20), tmp_path / "tok")
    result = fetch("cosmopedia/stories", tmp_path / "out", source_repo=str(repos["HuggingFaceTB/cosmopedia"]),
                   format="bin", tokenizer=str(tokenizer), val_tokens=100)
    names = sorted(p.name for p in (tmp_path / "out" / "cosmopedia" / "stories").glob("*.bin"))
    assert names and all(n.startswith(("cosmopedia-stories_val_", "cosmopedia-stories_train_")) for n in names)
    assert result.tokens > 0


def test_a_fetch_recorded_before_split_existed_is_still_the_same_fetch(mirror, tmp_path):
    first = fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=50)
    recorded = manifest(first.manifest.parent)
    del recorded["split"]
    first.manifest.write_text(json.dumps(recorded))
    again = fetch("cosmopedia-v2", tmp_path, source_repo=str(mirror), limit=50)
    assert again.already_complete and again.output.read_bytes() == first.output.read_bytes()
