"""Output: appends in order, from part files or from memory, with the hash of exactly what was written."""

import hashlib
import json

from smollm_corpus.manifest import Manifest
from smollm_corpus.output import Output


def test_appends_from_files_and_memory_are_hashed_and_checkpointed(tmp_path):
    manifest = Manifest({"subset": "x"}, commit=None)
    out = Output(tmp_path / "input.txt.incomplete", manifest, tmp_path / "manifest.json")
    part = tmp_path / "000000.part"
    part.write_bytes(b"first part, cut here|not this")
    out.copy(part, len(b"first part, cut here"))
    out.write(b"\n\n")
    out.append([b"second ", memoryview(b"part"), bytearray(b" and a third"), b"never"], len("second part and a th"))
    out.append([], 0)
    manifest.stats.bytes = 42
    out.checkpoint(wait=True)
    out.finish(tmp_path / "input.txt")
    written = (tmp_path / "input.txt").read_bytes()
    assert written == b"first part, cut here\n\nsecond part and a th"
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["sha256"] == hashlib.sha256(written).hexdigest()
