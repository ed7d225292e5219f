"""Token output: llm.c shards (--format bin) and nanoGPT's train.bin/val.bin, checked by decoding them back."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import toytokenizer
from conftest import CLI, kill_at_checkpoint, run_cli
from mirror import build_mirror, rows_for, text_for

SUBSET = "fineweb-edu-dedup"
EOT = "<|endoftext|>"
HEADER = 256


def _rows(subset: str, start: int, stop: int) -> pa.Table:
    """fineweb rows, some spelling the end-of-text token out, some a few KB long."""
    table = rows_for(subset, start, stop)
    texts = []
    for i in range(start, stop):
        text = text_for(subset, i)
        if i % 13 == 3:
            text = f"A page that mentions {EOT} in its text, then goes on. {text}"
        elif i % 5 == 1:
            text = (text + " ") * 30
        texts.append(text)
    return table.set_column(0, "text", pa.array(texts, pa.string()))


@pytest.fixture(scope="module")
def token_mirror(tmp_path_factory) -> Path:
    return build_mirror(tmp_path_factory.mktemp("token_mirror"), {SUBSET: [300, 250, 200]}, row_group_size=50, rows=_rows)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    texts = [text_for(SUBSET, i) for i in range(800)]
    return toytokenizer.save(toytokenizer.train(texts, vocab_size=600), tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def documents(token_mirror, tmp_path_factory) -> list[str]:
    """The rendered documents, as jsonl output gives them."""
    out = tmp_path_factory.mktemp("jsonl")
    assert run_cli("fetch", SUBSET, "--source", str(token_mirror), "-o", str(out), "-q", "--format", "jsonl").returncode == 0
    return [json.loads(line)["text"] for line in (out / SUBSET / "input.jsonl").read_text().splitlines()]


def fetch(mirror: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_cli("fetch", SUBSET, "--source", str(mirror), "-o", str(out), "-q", *args)
    assert result.returncode == 0, result.stderr
    return result


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An llm.c shard's header and tokens, read as llm.c's dataloader reads them."""
    header = np.fromfile(path, dtype="<i4", count=HEADER)
    dtype = {(20240520, 1): np.uint16, (20240801, 7): np.uint32}[(int(header[0]), int(header[1]))]
    tokens = np.fromfile(path, dtype=dtype, offset=HEADER * 4)
    assert len(tokens) == header[2]
    return header, tokens


def shards(folder: Path) -> list[Path]:
    """Shards in stream order: by their number."""
    return sorted(folder.glob(f"{SUBSET}_*.bin"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def split_documents(tokens: np.ndarray, eot_id: int, before: bool) -> list[list[int]]:
    ids = tokens.tolist()
    cuts = [i for i, t in enumerate(ids) if t == eot_id]
    if before:
        assert cuts and cuts[0] == 0
        bounds = cuts + [len(ids)]
        return [ids[a + 1 : b] for a, b in zip(bounds, bounds[1:])]
    assert not ids or ids[-1] == eot_id
    starts = [0] + [c + 1 for c in cuts[:-1]]
    return [ids[a:b] for a, b in zip(starts, cuts)]


def decoder(tokenizer_json: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    return lambda ids: tok.decode(ids, skip_special_tokens=False)


def test_bin_shards_decode_back_to_every_document_in_order(token_mirror, tokenizer_json, documents, tmp_path):
    fetch(token_mirror, tmp_path, "--format", "bin", "--tokenizer", str(tokenizer_json), "--shard-tokens", "20000",
          "--val-tokens", "15000")
    folder = tmp_path / SUBSET
    manifest = json.loads((folder / "manifest.json").read_text())
    eot_id = manifest["eot_id"]
    streams = {"val": [], "train": []}
    for path in shards(folder):
        header, tokens = read_shard(path)
        assert header[3:].tolist() == [0] * (HEADER - 3)
        streams[path.stem.rsplit("_", 2)[1]].append(tokens)
    val, train = (np.concatenate(streams[s]) for s in ("val", "train"))
    decode = decoder(tokenizer_json)
    val_docs = [decode(d) for d in split_documents(val, eot_id, before=True)]
    train_docs = [decode(d) for d in split_documents(train, eot_id, before=True)]
    assert val_docs + train_docs == documents  # disjoint, complete, in order, nothing doubled at shard edges
    # validation: the first whole documents reaching 15,000 tokens
    val_counts = [len(d) + 1 for d in split_documents(val, eot_id, before=True)]
    assert sum(val_counts) >= 15_000 > sum(val_counts[:-1])
    # a document that spells the end-of-text token out holds no end-of-text id
    assert sum(EOT in d for d in documents) > 10
    assert int((np.concatenate([val, train]) == eot_id).sum()) == len(documents)
    assert manifest["tokens"] == len(val) + len(train) and manifest["documents"] == len(documents)


def test_shards_hold_shard_tokens_each_and_the_manifest_lists_them(token_mirror, tokenizer_json, tmp_path):
    fetch(token_mirror, tmp_path, "--format", "bin", "--tokenizer", str(tokenizer_json), "--shard-tokens", "20000",
          "--val-tokens", "30000")
    folder = tmp_path / SUBSET
    manifest = json.loads((folder / "manifest.json").read_text())
    files = manifest["token_files"]["files"]
    assert [f["name"] for f in files] == [p.name for p in shards(folder)]
    names = [f["name"] for f in files]
    assert names[0] == f"{SUBSET}_val_000000.bin" and names[1] == f"{SUBSET}_val_000001.bin"
    assert names[2] == f"{SUBSET}_train_000002.bin"
    for split in ("val", "train"):
        counts = [f["tokens"] for f in files if f["split"] == split]
        assert all(c == 20_000 for c in counts[:-1]) and 0 < counts[-1] <= 20_000
    for f in files:
        data = (folder / f["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        assert read_shard(folder / f["name"])[0][2] == f["tokens"]
    assert manifest["tokenizer"] == str(tokenizer_json) and manifest["dtype"] == "uint16"
    assert manifest["tokenizer_sha256"] == hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()
    assert manifest["vocab_size"] == 600 and manifest["eot_id"] == 0
    assert manifest["tokens"] == sum(f["tokens"] for f in files)
    assert not list(folder.glob("*.incomplete"))


def test_a_vocabulary_past_65535_ids_writes_uint32_shards(token_mirror, tmp_path):
    big = toytokenizer.save(toytokenizer.train([text_for(SUBSET, i) for i in range(200)], 400), tmp_path / "tok",
                            extra_ids=65_300)
    fetch(token_mirror, tmp_path, "--format", "bin", "--tokenizer", str(big), "--limit", "60")
    header, tokens = read_shard(shards(tmp_path / SUBSET)[0])
    assert (header[0], header[1], tokens.dtype) == (20240801, 7, np.uint32)
    refused = run_cli("fetch", SUBSET, "--source", str(token_mirror), "-o", str(tmp_path / "n"), "--format", "nanogpt",
                      "--tokenizer", str(big))
    assert refused.returncode == 2 and "more than the uint16 that nanoGPT's train.bin holds" in refused.stderr
    assert not (tmp_path / "n").exists()


def test_nanogpt_files_read_with_memmap_and_meta_gives_the_vocab(token_mirror, tokenizer_json, documents, tmp_path):
    fetch(token_mirror, tmp_path, "--format", "nanogpt", "--tokenizer", str(tokenizer_json), "--val-tokens", "5000")
    folder = tmp_path / SUBSET
    val = np.memmap(folder / "val.bin", dtype=np.uint16, mode="r")
    train = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    decode = decoder(tokenizer_json)
    docs = [decode(d) for part in (val, train) for d in split_documents(np.asarray(part), 0, before=False)]
    assert docs == documents
    meta = pickle.loads((folder / "meta.pkl").read_bytes())
    assert meta["vocab_size"] == 600
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["token_files"]["files"]:
        assert hashlib.sha256((folder / f["name"]).read_bytes()).hexdigest() == f["sha256"]


def test_default_validation_is_at_most_one_percent_of_the_rows(token_mirror, tokenizer_json, tmp_path):
    fetch(token_mirror, tmp_path, "--format", "nanogpt", "--tokenizer", str(tokenizer_json))
    folder = tmp_path / SUBSET
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert len(split_documents(val, 0, before=False)) == 7  # 1% of 750 rows, rounded up: rows 0 to 7, row 5 empty
    no_val = tmp_path / "none"
    fetch(token_mirror, no_val, "--format", "nanogpt", "--tokenizer", str(tokenizer_json), "--val-tokens", "0")
    assert not (no_val / SUBSET / "val.bin").exists() and (no_val / SUBSET / "train.bin").exists()


def test_max_tokens_stops_at_a_whole_document(token_mirror, tokenizer_json, documents, tmp_path):
    fetch(token_mirror, tmp_path, "--format", "bin", "--tokenizer", str(tokenizer_json), "--max-tokens", "7000",
          "--val-tokens", "0")
    tokens = np.concatenate([read_shard(p)[1] for p in shards(tmp_path / SUBSET)])
    docs = split_documents(tokens, 0, before=True)
    assert len(tokens) <= 7000 and [decoder(tokenizer_json)(d) for d in docs] == documents[: len(docs)]
    assert len(tokens) + len(documents[len(docs)]) > 7000 - 100  # the next document would not have fitted (roughly)


@pytest.mark.parametrize("template", ["nanogpt", "{metadata.url} {text}"])
def test_templates_are_tokenized_as_rendered(token_mirror, tokenizer_json, tmp_path, template):
    jsonl = tmp_path / "jsonl"
    fetch(token_mirror, jsonl, "--format", "jsonl", "--template", template, "--limit", "40")
    expected = [json.loads(line)["text"] for line in (jsonl / SUBSET / "input.jsonl").read_text().splitlines()]
    fetch(token_mirror, tmp_path, "--format", "bin", "--tokenizer", str(tokenizer_json), "--template", template,
          "--limit", "40")
    tokens = np.concatenate([read_shard(p)[1] for p in shards(tmp_path / SUBSET)])
    assert [decoder(tokenizer_json)(d) for d in split_documents(tokens, 0, before=True)] == expected


def test_num_proc_does_not_change_a_byte(token_mirror, tokenizer_json, tmp_path):
    outputs = []
    for n in ("1", "4"):
        fetch(token_mirror, tmp_path / n, "--format", "bin", "--tokenizer", str(tokenizer_json), "--num-proc", n,
              "--shard-tokens", "30000")
        outputs.append({p.name: p.read_bytes() for p in shards(tmp_path / n / SUBSET)})
    assert outputs[0] == outputs[1] and len(outputs[0]) > 3


def test_options_that_change_the_tokens_refuse_a_rerun(token_mirror, tokenizer_json, tmp_path):
    args = ("fetch", SUBSET, "--source", str(token_mirror), "-o", str(tmp_path), "-q", "--format", "bin",
            "--tokenizer", str(tokenizer_json), "--limit", "30")
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0
    changed = run_cli(*args, "--shard-tokens", "1000")
    assert changed.returncode == 1 and "differing: shard_tokens" in changed.stderr
    assert run_cli(*args, "--shard-tokens", "1000", "--overwrite").returncode == 0


def test_token_options_need_a_token_format(token_mirror, tmp_path):
    result = run_cli("fetch", SUBSET, "--source", str(token_mirror), "-o", str(tmp_path), "--tokenizer", "gpt2")
    assert result.returncode == 2 and "--tokenizer apply to token formats only" in result.stderr


@pytest.fixture(scope="module")
def long_mirror(tmp_path_factory) -> Path:
    """Enough tokenizing (a few seconds) to kill a run in the middle of it."""
    return build_mirror(tmp_path_factory.mktemp("long_mirror"), {SUBSET: [1000] * 4}, row_group_size=50, rows=_rows)


@pytest.mark.parametrize("format", ["bin", "nanogpt"])
def test_kill_9_then_rerun_gives_identical_files(long_mirror, tokenizer_json, tmp_path, format):
    args = ["--format", format, "--tokenizer", str(tokenizer_json), "--val-tokens", "40000"]
    args += ["--shard-tokens", "50000"] if format == "bin" else []
    fetch(long_mirror, tmp_path / "ref", *args)
    reference = {p.name: p.read_bytes() for p in (tmp_path / "ref" / SUBSET).glob("*.bin")}
    out = tmp_path / "killed"
    manifest = out / SUBSET / "manifest.json"
    written = 0
    for _ in range(2):  # killed at the first checkpoint that records more than the last kill left
        proc = subprocess.Popen([CLI, "fetch", SUBSET, "--source", str(long_mirror), "-o", str(out), "-q", *args])
        written = kill_at_checkpoint(manifest, proc, written + 1)["rows"]
    fetch(long_mirror, out, *args)
    assert {p.name: p.read_bytes() for p in (out / SUBSET).glob("*.bin")} == reference
    assert not list((out / SUBSET).glob("*.incomplete"))
