"""Counters of a run, kept per chunk and added up in dataset order."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    rows: int = 0  # rows of the dataset read
    documents: int = 0  # documents written
    bytes: int = 0  # bytes written, separators included
    skipped: Counter = field(default_factory=Counter)  # rows not written, by reason

    def add(self, other: "Stats") -> None:
        self.rows += other.rows
        self.documents += other.documents
        self.bytes += other.bytes
        self.skipped.update(other.skipped)

    def to_json(self) -> dict:
        return {"rows": self.rows, "documents": self.documents, "bytes": self.bytes, "skipped": dict(sorted(self.skipped.items()))}

    @classmethod
    def from_json(cls, data: dict) -> "Stats":
        return cls(data["rows"], data["documents"], data["bytes"], Counter(data["skipped"]))
