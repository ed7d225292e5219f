"""Build a local directory laid out exactly like the HuggingFaceTB/smollm-corpus Hub repository.

Same README front matter (configs and dataset_info), same ``<subset>/train-NNNNN-of-NNNNN.parquet``
file names, same Arrow schemas as the published files.  ``datasets.load_dataset(DIR, subset)``
loads it exactly as it loads the Hub repository.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_TYPE = pa.struct(
    [
        ("dump", pa.string()),
        ("url", pa.string()),
        ("date", pa.timestamp("s")),
        ("file_path", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("token_count", pa.int64()),
        ("score", pa.float64()),
        ("int_score", pa.int64()),
    ]
)

SCHEMAS = {
    "cosmopedia-v2": pa.schema(
        [
            ("prompt", pa.string()),
            ("text", pa.string()),
            ("token_length", pa.int64()),
            ("audience", pa.string()),
            ("format", pa.string()),
            ("seed_data", pa.string()),
        ]
    ),
    "fineweb-edu-dedup": pa.schema(
        [("text", pa.string()), ("id", pa.string()), ("metadata", METADATA_TYPE)]
    ),
    "python-edu": pa.schema(
        [
            ("blob_id", pa.string()),
            ("repo_name", pa.string()),
            ("path", pa.string()),
            ("length_bytes", pa.int64()),
            ("score", pa.float64()),
            ("int_score", pa.int64()),
        ]
    ),
}

_FEATURES_YAML = {
    "cosmopedia-v2": """\
  features:
  - name: prompt
    dtype: string
  - name: text
    dtype: string
  - name: token_length
    dtype: int64
  - name: audience
    dtype: string
  - name: format
    dtype: string
  - name: seed_data
    dtype: string
""",
    "fineweb-edu-dedup": """\
  features:
  - name: text
    dtype: string
  - name: id
    dtype: string
  - name: metadata
    struct:
    - name: dump
      dtype: string
    - name: url
      dtype: string
    - name: date
      dtype: timestamp[s]
    - name: file_path
      dtype: string
    - name: language
      dtype: string
    - name: language_score
      dtype: float64
    - name: token_count
      dtype: int64
    - name: score
      dtype: float64
    - name: int_score
      dtype: int64
""",
    "python-edu": """\
  features:
  - name: blob_id
    dtype: string
  - name: repo_name
    dtype: string
  - name: path
    dtype: string
  - name: length_bytes
    dtype: int64
  - name: score
    dtype: float64
  - name: int_score
    dtype: int64
""",
}

SPECIAL_TEXTS = [
    "",  # renders empty: skipped and counted
    "   \n\t ",  # whitespace only: also empty
    "Ünïcödé — 数学 🙂 \u200b combining e\u0301",
    "line one\n\nline two with {braces} and \\ backslash",
]


def text_for(subset: str, index: int) -> str:
    """Deterministic document text; a few special and very long ones among them."""
    if index % 97 == 5:
        return SPECIAL_TEXTS[(index // 97) % len(SPECIAL_TEXTS)]
    if index % 211 == 7:
        return ("A very long document. " * 6000) + str(index)  # ~130 KB
    words = hashlib.sha256(f"{subset}:{index}".encode()).hexdigest()
    return f"Document {index} of {subset}: " + " ".join(words[i : i + 5] for i in range(0, 60, 5))


def blob_id_for(index: int) -> str:
    return hashlib.sha1(f"python-edu:{index}".encode()).hexdigest()


def python_source_for(index: int) -> str:
    return f"def f{index}(x):\n    \"\"\"Return x plus {index}.\"\"\"\n    return x + {index}\n"


def rows_for(subset: str, start: int, stop: int) -> pa.Table:
    n = stop - start
    idx = range(start, stop)
    if subset == "cosmopedia-v2":
        cols = {
            "prompt": [f"Write a textbook unit about topic {i}." for i in idx],
            "text": [text_for(subset, i) for i in idx],
            "token_length": [len(text_for(subset, i)) // 4 for i in idx],
            "audience": [("college_students", "young_children", "general")[i % 3] for i in idx],
            "format": [("textbook", "story", "blogpost")[i % 3] for i in idx],
            "seed_data": [("auto_math_text", "khanacademy", "stories")[i % 3] for i in idx],
        }
    elif subset == "fineweb-edu-dedup":
        cols = {
            "text": [text_for(subset, i) for i in idx],
            "id": [f"<urn:uuid:{hashlib.md5(str(i).encode()).hexdigest()}>" for i in idx],
            "metadata": [
                {
                    "dump": "CC-MAIN-2013-20",
                    "url": f"http://example.com/page/{i}",
                    "date": dt.datetime(2013, 5, 18, 5, 48, i % 60),
                    "file_path": "s3://commoncrawl/crawl-data/CC-MAIN-2013-20/segments/x.warc.gz",
                    "language": "en",
                    "language_score": 0.9 + (i % 10) / 100,
                    "token_count": 100 + i,
                    "score": 3.0 + (i % 20) / 10,
                    "int_score": 3 + (i % 3),
                }
                for i in idx
            ],
        }
    else:
        cols = {
            "blob_id": [blob_id_for(i) for i in idx],
            "repo_name": [f"user{i % 17}/project{i % 5}" for i in idx],
            "path": [f"/src/module_{i}.py" for i in idx],
            "length_bytes": [len(python_source_for(i)) for i in idx],
            "score": [4.0 + (i % 10) / 10 for i in idx],
            "int_score": [4 + (i % 2) for i in idx],
        }
    assert all(len(v) == n for v in cols.values())
    return pa.table(cols, schema=SCHEMAS[subset])


DEFAULT_LAYOUT = {"cosmopedia-v2": [300, 250, 280], "fineweb-edu-dedup": [200, 260, 240, 150], "python-edu": [400, 350]}


def build_mirror(
    root: Path,
    layout: dict[str, list[int]] | None = None,
    row_group_size: int = 64,
    rows: Callable[[str, int, int], pa.Table] = rows_for,
) -> Path:
    """Write the mirror under ``root``: ``layout`` maps each subset to its rows per parquet file."""
    layout = layout or DEFAULT_LAYOUT
    root.mkdir(parents=True, exist_ok=True)
    infos, configs = [], []
    for subset, sizes in layout.items():
        folder = root / subset
        folder.mkdir(exist_ok=True)
        start = 0
        num_bytes = download = 0
        for k, n in enumerate(sizes):
            table = rows(subset, start, start + n)
            path = folder / f"train-{k:05d}-of-{len(sizes):05d}.parquet"
            pq.write_table(table, path, row_group_size=row_group_size)
            num_bytes += table.nbytes
            download += path.stat().st_size
            start += n
        infos.append(
            f"- config_name: {subset}\n{_FEATURES_YAML[subset]}"
            f"  splits:\n  - name: train\n    num_bytes: {num_bytes}\n    num_examples: {start}\n"
            f"  download_size: {download}\n  dataset_size: {num_bytes}\n"
        )
        configs.append(
            f"- config_name: {subset}\n  data_files:\n  - split: train\n    path: {subset}/train-*\n"
        )
    readme = (
        "---\nlicense: odc-by\ndataset_info:\n"
        + "".join(infos)
        + "configs:\n"
        + "".join(configs)
        + "---\n\n# SmolLM-Corpus\n\nA local mirror of HuggingFaceTB/smollm-corpus.\n"
    )
    (root / "README.md").write_text(readme)
    return root


# -- other Hub datasets: Cosmopedia v0.1 and generic repositories ---------------------------------

COSMOPEDIA_CONFIGS = ("auto_math_text", "khanacademy", "openstax", "stanford", "stories", "web_samples_v1",
                      "web_samples_v2", "wikihow")
COSMOPEDIA_SCHEMA = pa.schema([
    ("prompt", pa.string()), ("text", pa.string()), ("text_token_length", pa.int64()),
    ("format", pa.string()), ("audience", pa.string()), ("seed_data", pa.string()),
])
_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64"}


def cosmopedia_rows(config: str, start: int, stop: int) -> pa.Table:
    """Rows shaped like Cosmopedia v0.1's published files (the token count is ``text_token_length``)."""
    idx = range(start, stop)
    texts = [text_for(f"cosmopedia/{config}", i) for i in idx]
    return pa.table({
        "prompt": [f"  Write a {config} piece about topic {i}.\n" for i in idx],
        "text": texts,
        "text_token_length": [len(t) // 4 for t in texts],
        "format": [("textbook", "story", "wikihow")[i % 3] for i in idx],
        "audience": [("college_students", "young_children", "general")[i % 3] for i in idx],
        "seed_data": [config] * len(texts),
    }, schema=COSMOPEDIA_SCHEMA)


def build_repo(
    root: Path,
    configs: dict[str, dict[str, list[pa.Table]]],
    *,
    folder: Callable[[str], str] = lambda config: f"data/{config}",
    dataset_info: bool = True,
    suffix: str = "parquet",
) -> Path:
    """Write a Hub-style dataset repository under ``root``: ``configs`` maps each config to its splits, each
    split to the tables of its files, written as ``<folder(config)>/<split>-NNNNN-of-NNNNN.<suffix>``
    (``parquet``, or ``jsonl``, one JSON object a line); README front matter declares the configs
    (and, with ``dataset_info``, their features and row counts, as the Hub's parquet repositories do).
    """
    import json

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    infos, declared = [], []
    for config, splits in configs.items():
        data_files, split_infos, schema = [], [], None
        for split, tables in splits.items():
            for k, table in enumerate(tables):
                path = root / folder(config) / f"{split}-{k:05d}-of-{len(tables):05d}.{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                if suffix == "parquet":
                    pq.write_table(table, path, row_group_size=16)
                else:
                    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
                schema = table.schema
            data_files.append({"split": split, "path": f"{folder(config)}/{split}-*"})
            split_infos.append({"name": split, "num_examples": sum(t.num_rows for t in tables)})
        declared.append({"config_name": config, "data_files": data_files})
        features = [{"name": f.name, "dtype": _DTYPES[f.type]} for f in schema]
        infos.append({"config_name": config, "features": features, "splits": split_infos})
    front = {"license": "odc-by", **({"dataset_info": infos} if dataset_info else {}), "configs": declared}
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# A dataset\n")
    return root


def build_cosmopedia(root: Path, rows: int = 40) -> Path:
    """Cosmopedia v0.1 in miniature: its eight configs, ``data/<config>/train-*.parquet``, two files for some."""
    return build_repo(root, {
        config: {"train": [cosmopedia_rows(config, 0, rows), cosmopedia_rows(config, rows, rows + 7 * k)][: 1 + k % 2]}
        for k, config in enumerate(COSMOPEDIA_CONFIGS)
    })


def build_cosmopedia_100k(root: Path, rows: int = 150) -> Path:
    """The 100k-row sample in miniature: one ``default`` config over ``data/train-*.parquet``."""
    return build_repo(root, {"default": {"train": [cosmopedia_rows("sample", 0, rows)]}}, folder=lambda c: "data")


def generic_rows(tag: str, start: int, stop: int, text: bool = True) -> pa.Table:
    """Rows of a generic dataset: a ``text`` column (or a question and answer without one) and a score."""
    idx = range(start, stop)
    if text:
        return pa.table({"id": [f"{tag}-{i}" for i in idx], "text": [text_for(tag, i) for i in idx],
                         "score": [i / 10 for i in idx]})
    return pa.table({"question": [f"What is {i} plus {i}? ({tag})" for i in idx],
                     "answer": [str(2 * i) for i in idx]})
