"""The run manifest: what a fetch was asked to do and how far it got, saved after every chunk.

It is the resume point. Progress is recorded only after the data it describes is durable,
and the file is replaced atomically, so after any crash it describes a prefix of the output.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import OutputError
from .stats import Stats

#: the options that decide the bytes of the output; a rerun with other values is another fetch
IDENTITY = (
    "subset", "source", "revision", "split", "template", "strip", "separator", "format", "limit", "max_bytes", "bucket", "where", "decontaminate",
    "dedup", "mix",
    # token formats: the tokenizer (and the Hub commit it came from), and how the stream is cut into files
    "tokenizer", "tokenizer_sha256", "tokenizer_commit", "vocab_size", "eot_id", "dtype", "val_tokens", "shard_tokens",
    "max_tokens",
)


@dataclass
class Manifest:
    options: dict  # the IDENTITY options, as asked for
    commit: str | None = None  # the Hub commit the revision resolved to, pinned for resumes
    #: where the output stops: the next row to read, as a file of the source and a row within it
    position: dict = field(default_factory=lambda: {"file": 0, "row": 0})
    stats: Stats = field(default_factory=Stats)
    missing_blobs: list[str] = field(default_factory=list)
    corrupt_blobs: list[str] = field(default_factory=list)
    #: documents dropped by decontamination: source file, row, benchmark task and sample, ratio, shared n-gram
    contaminated: list[dict] = field(default_factory=list)
    sha256: str | None = None
    #: SHA-256 state of the output's first ``stats.bytes`` bytes (see digest.py), so a resume need not read them back
    hash_state: str | None = None
    #: SHA-256 of the output's last 64 KB at the checkpoint, to tell a file changed since
    tail_sha256: str | None = None
    #: token formats: where validation ends in the token stream, the finished files, the open file's hash state
    token_files: dict | None = None
    started: str = field(default_factory=lambda: _now())
    finished: str | None = None
    complete: bool = False
    #: more to record in the finished manifest (a mix's inputs)
    details: dict | None = None

    def differences(self, options: dict) -> list[str]:
        """Names of the identity options whose values differ from ``options``."""
        return [k for k in IDENTITY if self.options.get(k) != options.get(k)]

    def finish(self, sha256: str | None) -> None:
        self.sha256, self.finished, self.complete = sha256, _now(), True

    def to_json(self) -> dict:
        data = {**self.options, "commit": self.commit, "complete": self.complete}
        data.update(self.stats.to_json())
        if self.options.get("dtype"):
            data["tokens"] = self.stats.bytes // (2 if self.options["dtype"] == "uint16" else 4)
        data.update(
            sha256=self.sha256,
            started=self.started,
            finished=self.finished,
            position=dict(self.position),
            missing_blobs=len(self.missing_blobs),
            corrupt_blobs=list(self.corrupt_blobs),
            tool_version=__version__,
            missing_blob_ids=list(self.missing_blobs),
            hash_state=self.hash_state,
            tail_sha256=self.tail_sha256,
        )
        if self.token_files is not None:
            data["token_files"] = self.token_files
        if self.details:
            data.update(self.details)
        if self.options.get("decontaminate"):
            data["contaminated_by_task"] = dict(sorted(Counter(c["task"] for c in self.contaminated).items()))
            data["contaminated"] = list(self.contaminated)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        return cls(
            options={k: data.get(k) for k in IDENTITY},
            commit=data.get("commit"),
            position=data["position"],
            stats=Stats.from_json(data),
            missing_blobs=data.get("missing_blob_ids", []),
            corrupt_blobs=data.get("corrupt_blobs", []),
            contaminated=data.get("contaminated", []),
            sha256=data.get("sha256"),
            hash_state=data.get("hash_state"),
            tail_sha256=data.get("tail_sha256"),
            token_files=data.get("token_files"),
            started=data["started"],
            finished=data.get("finished"),
            complete=data["complete"],
        )

    def save(self, path: Path, data: dict | None = None) -> None:
        """Replace ``path`` atomically with this manifest (or ``data``, a :meth:`to_json` taken earlier), durably."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_json() if data is None else data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Manifest | None":
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as e:
            raise OutputError(f"{path} cannot be read ({e}); rerun with --overwrite to start again") from None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

