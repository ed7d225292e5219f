"""Which documents are near-duplicates (--dedup): LSH buckets, pairs, clusters, on disk and in bounded memory.

Two documents are candidates when all 8 hashes of one of their 14 buckets are equal (datatrove's
LSH); candidates are joined into clusters, and every document of a cluster but its first (in
command order, then dataset order) is a duplicate of that first one. As datatrove, no pair is
verified further: one equal bucket makes a pair.

Each document is named by a 64-bit id whose order is that order: its input's place in the
command, its chunk's place in the dataset, its row in the chunk. The work is done in steps,
each resumable after ``kill -9`` (a step's output is renamed into place when whole):

1. *partition*: each document's 14 bucket keys (a 128-bit digest of the bucket's 8 hashes) go
   to one of up to 512 partition files by the key's leading bits: equal keys meet in one file;
2. *pairs*: each partition (about 48 MB) is sorted in memory; neighbours with equal keys are pairs;
3. *clusters*: the pairs (only documents that have a near-duplicate appear in them) are joined
   by propagating the smallest id, and each duplicate is listed with the document it
   duplicates and the similarity their signatures estimate.

Memory: a partition at a time (48 MB up to 75 million documents, more beyond), then the pairs
(up to 14 of 16 bytes per document that has a near-duplicate) and 40 bytes per such document.
Disk: 24 bytes per document and bucket (336 per document) for the partitions.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np

from . import minhash, signed
from .errors import SourceError, writing

#: bytes of partition data sorted at a time
PARTITION_BYTES = 48 << 20
MAX_PARTITIONS = 512
#: bits of a document id for its row in its chunk, and for its chunk in its dataset
ROW_BITS, CHUNK_BITS = 24, 32
DUPLICATES_DTYPE = np.dtype([("removed", "<u8"), ("kept", "<u8"), ("similarity", "<f4")])


def doc_id(input_index: int, ordinal: int, row: np.ndarray) -> np.ndarray:
    return (np.uint64(input_index) << np.uint64(ROW_BITS + CHUNK_BITS)) | (np.uint64(ordinal) << np.uint64(ROW_BITS)) | row.astype(np.uint64)


def split_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input, ordinal, row) of each id."""
    ids = ids.astype(np.uint64)
    return (ids >> np.uint64(ROW_BITS + CHUNK_BITS), (ids >> np.uint64(ROW_BITS)) & np.uint64((1 << CHUNK_BITS) - 1),
            ids & np.uint64((1 << ROW_BITS) - 1))


def removed_rows(duplicates: np.ndarray, input_index: int, ordinal: int) -> np.ndarray:
    """Rows (within the chunk) of the duplicates in chunk ``ordinal`` of input ``input_index``."""
    first = doc_id(input_index, ordinal, np.zeros(1, np.int64))[0]
    removed = duplicates["removed"]
    lo, hi = np.searchsorted(removed, [first, first + (np.uint64(1) << np.uint64(ROW_BITS))])
    return split_id(removed[lo:hi])[2].astype(np.int64)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


_MULTIPLIERS = np.random.RandomState(2**31 - 1).randint(0, 2**63, size=(2, minhash.BUCKETS, minhash.PER_BUCKET),
                                                        dtype=np.uint64) | np.uint64(1)


def bucket_keys(signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit halves of a digest of each bucket of each signature: arrays of shape (documents, 14).

    Equal buckets give equal keys; different buckets (of a bucket number, or of two) collide
    with a chance of about 2**-128.
    """
    mixed = _mix(signatures.reshape(-1, minhash.BUCKETS, minhash.PER_BUCKET))
    with np.errstate(over="ignore"):
        high = _mix((mixed * _MULTIPLIERS[0]).sum(axis=2, dtype=np.uint64))
        low = _mix((mixed * _MULTIPLIERS[1]).sum(axis=2, dtype=np.uint64))
    return high, low


class Clusters:
    """The near-duplicates among the stored chunks of ``stores`` (in command order), worked out in ``folder``."""

    def __init__(self, stores: list[signed.Store], folder: Path) -> None:
        self.stores, self.folder = stores, folder
        self.result = folder / "duplicates.npy"

    def run(self) -> np.ndarray:
        """Every duplicate with the document it duplicates and their estimated similarity, by removed id."""
        if not self.result.exists():
            with writing(self.folder):
                self.folder.mkdir(parents=True, exist_ok=True)
                partitions = self._partition()
                edges = [self._pairs(p) for p in partitions]
                duplicates = self._clusters(edges)
                tmp = self.folder / "duplicates.tmp.npy"
                np.save(tmp, duplicates)
                signed._fsync(tmp)
                os.replace(tmp, self.result)
            shutil.rmtree(self.folder / "partitions", ignore_errors=True)
        return np.load(self.result)

    def _partition(self) -> list[Path]:
        folder = self.folder / "partitions"
        done = folder / "done"
        if done.exists():
            return sorted(folder.glob("*.bin"))
        documents = sum(info.stats.documents for store in self.stores for _, info in store.chunks())
        wanted = documents * minhash.BUCKETS * 24 / PARTITION_BYTES
        bits = min(int(np.ceil(np.log2(max(wanted, 1)))), int(np.log2(MAX_PARTITIONS)))
        count = 1 << bits
        shutil.rmtree(folder, ignore_errors=True)  # a step stopped part way is done again, with all after it
        folder.mkdir()
        files = [open(folder / f"{p:04d}.bin", "wb") for p in range(count)]
        try:
            for i, ordinal, chunk, info in signed.documents(self.stores):
                if ordinal >= 1 << CHUNK_BITS or (info.rows and info.rows[-1] >= 1 << ROW_BITS):
                    raise SourceError(f"{chunk.file.name}: a row group of more than {1 << ROW_BITS:,} rows cannot be "
                                      "deduplicated; please report it")
                sigs = np.asarray(self.stores[i].signatures(chunk))
                if not len(sigs):
                    continue
                signed_rows = sigs[:, 0] != minhash.UNSIGNED
                ids = doc_id(i, ordinal, np.asarray(info.rows, dtype=np.int64)[signed_rows])
                high, low = bucket_keys(sigs[signed_rows])
                records = np.empty((high.size, 3), dtype=np.uint64)
                records[:, 0], records[:, 1] = high.ravel(), low.ravel()
                records[:, 2] = np.repeat(ids, minhash.BUCKETS)
                target = records[:, 0] >> np.uint64(64 - bits) if bits else np.zeros(len(records), np.uint64)
                order = np.argsort(target, kind="stable")
                bounds = np.searchsorted(target[order], np.arange(count + 1, dtype=np.uint64))
                records = records[order]
                for p in range(count):
                    if bounds[p] < bounds[p + 1]:
                        files[p].write(records[bounds[p]:bounds[p + 1]].tobytes())
        finally:
            for f in files:
                f.close()
        for p in range(count):
            signed._fsync(folder / f"{p:04d}.bin")
        done.touch()
        return sorted(folder.glob("*.bin"))

    def _pairs(self, partition: Path) -> Path:
        """Sort one partition; neighbours with equal keys are pairs (earlier id, later id)."""
        out = partition.with_suffix(".pairs.npy")
        if out.exists():
            return out
        records = np.fromfile(partition, dtype=np.uint64).reshape(-1, 3)
        records = records[np.lexsort((records[:, 2], records[:, 1], records[:, 0]))]
        same = (records[1:, 0] == records[:-1, 0]) & (records[1:, 1] == records[:-1, 1])
        pairs = np.stack([records[:-1, 2][same], records[1:, 2][same]], axis=1)
        pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0) if len(pairs) else pairs.reshape(0, 2)
        tmp = partition.with_suffix(".pairs.tmp.npy")
        np.save(tmp, pairs)
        signed._fsync(tmp)
        os.replace(tmp, out)
        return out

    def _clusters(self, edges: list[Path]) -> np.ndarray:
        pairs = np.concatenate([np.load(e) for e in edges] or [np.empty((0, 2), np.uint64)])
        if not len(pairs):
            return np.empty(0, DUPLICATES_DTYPE)
        nodes = np.unique(pairs)
        a, b = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
        del pairs
        label = components(a, b, len(nodes))
        removed = np.nonzero(label != np.arange(len(nodes)))[0]
        duplicates = np.empty(len(removed), DUPLICATES_DTYPE)
        duplicates["removed"], duplicates["kept"] = nodes[removed], nodes[label[removed]]
        duplicates["similarity"] = self._similarities(duplicates["removed"], duplicates["kept"])
        return duplicates

    def _similarities(self, removed: np.ndarray, kept: np.ndarray) -> np.ndarray:
        keys = [store.keys() for store in self.stores]

        @functools.lru_cache(maxsize=64)
        def chunk(i: int, ordinal: int) -> tuple[np.ndarray, np.ndarray]:
            stored, info = self.stores[i].load(keys[i][ordinal])
            return np.asarray(info.rows, np.int64), self.stores[i].signatures(stored)

        def signatures_of(ids: np.ndarray) -> np.ndarray:
            inputs, ordinals, rows = split_id(ids)
            out = np.empty((len(ids), minhash.HASHES), np.uint64)
            for i, ordinal in sorted(set(zip(inputs.tolist(), ordinals.tolist()))):
                chunk_rows, sigs = chunk(i, ordinal)
                where = np.nonzero((inputs == i) & (ordinals == ordinal))[0]
                out[where] = sigs[np.searchsorted(chunk_rows, rows[where].astype(np.int64))]
            return out

        result = np.empty(len(removed), np.float32)
        step = 65536
        for lo in range(0, len(removed), step):
            a, b = signatures_of(removed[lo:lo + step]), signatures_of(kept[lo:lo + step])
            result[lo:lo + step] = (a == b).mean(axis=1)
        return result


def components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """For each of ``n`` nodes joined by the edges ``a[i]``-``b[i]``, the smallest node of its connected component."""
    label = np.arange(n)
    for _ in range(n + 1):  # each round at least halves the distance to the smallest node, or ends
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        while True:  # pointer jumping: a node takes its label's label
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new
    raise AssertionError("components did not converge")
