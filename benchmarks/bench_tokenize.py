"""Benchmark: fineweb-shaped parquet to token files, four ways, on the same documents and tokenizer.

(a) the ceiling: ``tokenizers`` alone, ``encode_batch`` (and ``encode_batch_fast``) over every
    text already in memory, on all cores; only the encoding is timed;
(b) nanoGPT's ``data/openwebtext/prepare.py``: ``load_dataset(num_proc=N)``, a 0.05% val split,
    ``Dataset.map(num_proc=N)`` encoding one document at a time with the end-of-text token
    after it, then train.bin / val.bin written through ``np.memmap`` in 1,024 batches;
(c) llm.c's ``dev/data/fineweb.py``: ``load_dataset(split="train")``, ``mp.Pool(cpus - 2)``
    (at least 1) ``imap`` over the documents in chunks of 16, the end-of-text token before each
    document, uint16, 100M-token shards behind the 256-int32 header; again with a pool of one
    process per core;
(d) ``smollm-corpus fetch fineweb-edu-dedup --source MIRROR --format bin --tokenizer FILE``,
    skipped with a note while the command does not accept those options.

The tokenizer is a byte-level BPE shaped like SmolLM's (digits split one by one, 49,152 ids,
``<|endoftext|>`` special), trained here with ``tokenizers`` on the sample, then on Python's
own library sources until it has every id. (b) and (c) call it where the published scripts call
tiktoken's ``encode_ordinary``: ``encode(text, add_special_tokens=False)`` with special tokens
encoded as text, which gives the same ids.

The documents are the real fineweb-edu sample (``--sample``), repeated to ``--text-mb`` of text,
in a local mirror laid out like the Hub repository. Each run is a fresh process tree measured
from outside (wall, CPU, peak RSS/PSS of the whole tree), as in bench_export.py; outputs are
checked against (a)'s tokens.

    .venv/bin/python benchmarks/bench_tokenize.py                       # 64 MB of text, 3 runs
    .venv/bin/python benchmarks/bench_tokenize.py --text-mb 8 --runs 1 --only a,c
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, Measurement  # noqa: E402

SUBSET = "fineweb-edu-dedup"
ROW_GROUP_ROWS = 1000
VOCAB_SIZE = 49_152
EOT = "<|endoftext|>"
#: llm.c's defaults: tokens per shard, and the header of a GPT-2-sized (uint16) shard
SHARD_TOKENS = 10**8
LLMC_MAGIC, LLMC_VERSION = 20240520, 1
HEADER_INTS = 256
RUN_TIMEOUT_S = 3600


# ---------------------------------------------------------------------------------------------
# inputs: the mirror and the tokenizer, built once under --work


def read_sample(path: Path) -> list[str]:
    docs = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not docs:
        raise SystemExit(f"{path} holds no documents: pass --sample a jsonl file with a 'text' field")
    return docs


def ensure_mirror(work: Path, docs: list[str], text_mb: float) -> Path:
    """A fineweb-edu-dedup mirror whose texts are ``docs`` over and over, ~``text_mb`` MB of text in all."""
    from mirror import build_mirror, rows_for
    import pyarrow as pa

    digest = hashlib.sha256("\0".join(docs).encode()).hexdigest()[:10]
    root = work / "mirrors" / f"tokenize-{digest}-{text_mb:g}mb"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    mean = sum(len(d.encode()) for d in docs) / len(docs)
    rows = max(1, round(text_mb * MB / mean))
    files = 2 if rows >= 2 * ROW_GROUP_ROWS else 1

    def table(subset: str, start: int, stop: int) -> pa.Table:
        texts = [docs[i % len(docs)] for i in range(start, stop)]
        return rows_for(subset, start, stop).set_column(0, "text", pa.array(texts, pa.string()))

    print(f"building {root} ({rows:,} rows) ...", file=sys.stderr, flush=True)
    build_mirror(root, {SUBSET: [rows // files + (k < rows % files) for k in range(files)]},
                 row_group_size=ROW_GROUP_ROWS, rows=table)
    (root / ".complete").write_text("")  # written last: a half-built mirror is rebuilt next time
    return root


def ensure_tokenizer(work: Path, docs: list[str]) -> Path:
    """A SmolLM-shaped byte-level BPE with VOCAB_SIZE ids, trained on ``docs`` and, to fill it, Python's sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    digest = hashlib.sha256("\0".join(docs).encode()).hexdigest()[:10]
    path = work / "tokenizers" / f"bpe-{VOCAB_SIZE}-{digest}" / "tokenizer.json"
    if path.exists():
        return path
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    extra: list[str] = []
    for size_mb in (4, 8, 16, 32, 64):  # the sample alone has too few distinct words for every id
        while sources and sum(map(len, extra)) < size_mb * MB:
            extra.append(sources.pop(0).read_text(encoding="utf-8", errors="replace"))
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(docs + extra, trainer)
        if tok.get_vocab_size() >= VOCAB_SIZE or not sources:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    print(f"trained {path}: {tok.get_vocab_size():,} ids", file=sys.stderr, flush=True)
    return path


def text_bytes(mirror: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(pc.sum(pc.binary_length(pq.read_table(p, columns=["text"])["text"])).as_py()
               for p in sorted((mirror / SUBSET).glob("*.parquet")))


# ---------------------------------------------------------------------------------------------
# the approaches; each runs in a fresh interpreter via common.python_call


def _fast_tokenizer(path: str):
    """The tokenizer as the published scripts would hold it, special tokens encoded as text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.encode_special_tokens = True
    return tok


def run_ceiling(source: str, tokenizer: str, out: str, call: str) -> None:
    """(a) every text in memory first, then one ``call`` (encode_batch or encode_batch_fast) on all cores."""
    import numpy as np
    import pyarrow.parquet as pq

    texts = [t for p in sorted((Path(source) / SUBSET).glob("*.parquet"))
             for t in pq.read_table(p, columns=["text"])["text"].to_pylist()]
    tok = _fast_tokenizer(tokenizer)
    eot = tok.token_to_id(EOT)
    started = time.perf_counter()
    encodings = getattr(tok, call)(texts, add_special_tokens=False)
    seconds = time.perf_counter() - started
    ids = [e.ids for e in encodings]
    tokens = np.fromiter((t for doc in ids for t in (eot, *doc)), np.uint16)
    Path(out, "result.json").write_text(json.dumps({"seconds": seconds, **_digests(tokens)}))


_nanogpt_tok = None


def _nanogpt_process(example: dict) -> dict:
    ids = _nanogpt_tok.encode(example["text"], add_special_tokens=False).ids
    ids.append(_nanogpt_tok.token_to_id(EOT))
    return {"ids": ids, "len": len(ids)}


def run_nanogpt(source: str, tokenizer: str, out: str, num_proc: int) -> None:
    """(b) nanoGPT prepare.py, with this tokenizer in place of tiktoken's gpt2."""
    import numpy as np
    from datasets import load_dataset

    global _nanogpt_tok
    _nanogpt_tok = _fast_tokenizer(tokenizer)
    dataset = load_dataset(source, SUBSET, num_proc=num_proc)
    split = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(_nanogpt_process, remove_columns=["text"], desc="tokenizing the splits", num_proc=num_proc)
    for name, dset in tokenized.items():
        total = np.sum(dset["len"], dtype=np.uint64)
        arr = np.memmap(Path(out) / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(int(total),))
        # prepare.py writes 1,024 contiguous shards; a split with fewer rows (val, at this size) gets one per row
        batches = min(1024, len(dset))
        idx = 0
        for batch_idx in range(batches):
            batch = dset.shard(num_shards=batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx:idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()


@functools.cache
def _llmc_tok(path: str):
    return _fast_tokenizer(path)  # loaded once per worker, as tiktoken.get_encoding caches its encodings


def _llmc_tokenize(args: tuple[str, dict]):
    import numpy as np

    path, doc = args
    tok = _llmc_tok(path)
    tokens = [tok.token_to_id(EOT)]
    tokens.extend(tok.encode(doc["text"], add_special_tokens=False).ids)
    array = np.array(tokens)
    assert (0 <= array).all() and (array < 2**16).all(), "token dictionary too large for uint16"
    return array.astype(np.uint16)


def _llmc_write(path: Path, toks: list[int]) -> None:
    import numpy as np

    assert len(toks) < 2**31, "token count too large"
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = LLMC_MAGIC, LLMC_VERSION, len(toks)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(toks, dtype=np.uint16).tobytes())


def run_llmc(source: str, tokenizer: str, out: str, procs: int | None) -> None:
    """(c) llm.c dev/data/fineweb.py, with this tokenizer in place of tiktoken's gpt2."""
    import multiprocessing as mp

    import numpy as np
    from datasets import load_dataset

    fw = load_dataset(source, name=SUBSET, split="train")
    nprocs = procs or max(1, os.cpu_count() - 2)
    with mp.Pool(nprocs) as pool:
        shard_index, token_count = 0, 0
        shard = np.empty((SHARD_TOKENS,), dtype=np.uint16)
        for tokens in pool.imap(_llmc_tokenize, ((tokenizer, doc) for doc in fw), chunksize=16):
            if token_count + len(tokens) < SHARD_TOKENS:
                shard[token_count:token_count + len(tokens)] = tokens
                token_count += len(tokens)
            else:  # fill this shard, write it, and start the next with the rest of the document
                split = "val" if shard_index == 0 else "train"
                remainder = SHARD_TOKENS - token_count
                shard[token_count:] = tokens[:remainder]
                _llmc_write(Path(out) / f"edu_fineweb_{split}_{shard_index:06d}.bin", shard.tolist())
                shard_index += 1
                shard[:len(tokens) - remainder] = tokens[remainder:]
                token_count = len(tokens) - remainder
        if token_count:
            split = "val" if shard_index == 0 else "train"
            _llmc_write(Path(out) / f"edu_fineweb_{split}_{shard_index:06d}.bin", shard[:token_count].tolist())


# ---------------------------------------------------------------------------------------------
# checking outputs


def _digests(tokens) -> dict:
    """Token count, and digests of the sequence and of the multiset (order-free) of ``tokens``."""
    import numpy as np

    counts = np.bincount(tokens, minlength=VOCAB_SIZE).astype(np.int64)
    return {"tokens": int(len(tokens)), "sequence": hashlib.sha256(tokens.astype(np.uint16).tobytes()).hexdigest(),
            "multiset": hashlib.sha256(counts.tobytes()).hexdigest()}


def read_shards(out: Path):
    """Tokens of every llm.c-format ``.bin`` shard under ``out``, in shard order (the val shard is 0)."""
    import numpy as np

    def index(p: Path) -> int:
        found = re.search(r"(\d+)$", p.stem)
        return int(found.group(1)) if found else -1

    parts = []
    for path in sorted(common.find_files(out, ".bin"), key=lambda p: (index(p), p.name)):
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
        dtype = {20240520: np.uint16, 20240801: np.uint32}.get(int(header[0]))
        if dtype is None:
            raise ValueError(f"{path.name} has no llm.c header (magic {header[0]})")
        parts.append(np.fromfile(path, dtype=dtype, offset=HEADER_INTS * 4, count=int(header[2])))
    return np.concatenate(parts) if parts else np.empty(0, np.uint16)


def read_nanogpt(out: Path):
    import numpy as np

    return np.concatenate([np.fromfile(out / f"{split}.bin", dtype=np.uint16) for split in ("train", "val")])


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class Approach:
    key: str
    label: str
    command: Callable[[Path, Path, Path, Path], list[str]]  # (mirror, tokenizer, out, scratch) -> argv
    check: str  # "ceiling": reads result.json; "sequence" or "multiset": compared with (a)'s tokens
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    m: Measurement
    tokens: int
    seconds: float  # encoding time for (a), wall time for the others
    digests: dict


@dataclass
class Result:
    approach: Approach
    runs: list[Run] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        failed = [r.m for r in self.runs if not r.m.ok]
        return failed[0].error() if failed else None

    def med(self, get: Callable[[Run], float]) -> float | None:
        return None if self.error or not self.runs else common.median(get(r) for r in self.runs)

    @property
    def tokens_per_s(self) -> float | None:
        return self.med(lambda r: r.tokens / r.seconds)


def approaches(only: set[str]) -> list[Approach]:
    cpus = os.cpu_count() or 1
    cli = common.cli_path()

    def call(func: str, **kwargs: object):
        return lambda m, t, o, s: common.python_call("bench_tokenize", func, source=str(m), tokenizer=str(t),
                                                     out=str(o), **kwargs)

    def fetch(m: Path, t: Path, o: Path, s: Path) -> list[str]:
        return [str(cli or "smollm-corpus"), "fetch", SUBSET, "--source", str(m), "--format", "bin",
                "--tokenizer", str(t), "-o", str(o), "-q"]

    rayon = {"TOKENIZERS_PARALLELISM": "true"}
    every = [
        Approach("a", f"(a) tokenizers encode_batch, {cpus} cores", call("run_ceiling", call="encode_batch"),
                 "ceiling", rayon),
        Approach("af", f"(a) tokenizers encode_batch_fast, {cpus} cores", call("run_ceiling", call="encode_batch_fast"),
                 "ceiling", rayon),
        Approach("b", f"(b) nanoGPT prepare.py, num_proc={cpus}", call("run_nanogpt", num_proc=cpus), "multiset"),
        Approach("c", f"(c) llm.c fineweb.py, Pool({max(1, cpus - 2)})", call("run_llmc", procs=None), "sequence"),
        Approach("cn", f"(c) llm.c fineweb.py, Pool({cpus})", call("run_llmc", procs=cpus), "sequence"),
        Approach("d", "(d) smollm-corpus fetch --format bin", fetch, "sequence", {"TOKENIZERS_PARALLELISM": ""}),
    ]
    return [a for a in every if a.key[0] in only]


def cli_skip_reason() -> str | None:
    """Why (d) cannot run yet, or None when the command accepts --format bin and --tokenizer."""
    cli = common.cli_path()
    if cli is None:
        return "smollm-corpus is not installed"
    shown = subprocess.run([str(cli), "fetch", "--help"], capture_output=True, text=True).stdout
    if "--tokenizer" not in shown or not re.search(r"--format[^\n]*\n?[^\n]*\bbin\b", shown):
        return "smollm-corpus fetch does not accept --format bin --tokenizer yet"
    return None


def measure(approach: Approach, mirror: Path, tokenizer: Path, work: Path, tag: str) -> Run:
    """One fresh-process run; its output is checked, then deleted with its scratch folder; the log is kept."""
    run_dir = work / "runs" / f"tokenize-{approach.key}-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out, scratch = run_dir / "out", run_dir / "scratch"
    out.mkdir(parents=True)
    env = common.base_env(scratch, **approach.env)
    if env.get("TOKENIZERS_PARALLELISM") == "":
        del env["TOKENIZERS_PARALLELISM"]  # the tool decides
    m = common.run_measured(approach.command(mirror, tokenizer, out, scratch), env=env, log=run_dir / "log.txt",
                            watch=[scratch], timeout_s=RUN_TIMEOUT_S)
    digests: dict = {}
    seconds = m.wall_s
    if m.ok:
        try:
            if approach.check == "ceiling":
                digests = json.loads((out / "result.json").read_text())
                seconds = digests.pop("seconds")
            else:
                digests = _digests(read_nanogpt(out) if approach.check == "multiset" else read_shards(out))
        except (OSError, ValueError) as e:
            m.returncode = 1
            (run_dir / "log.txt").open("a").write(f"\noutput unreadable: {e}\n")
    shutil.rmtree(out)
    shutil.rmtree(scratch)
    tokens = digests.get("tokens", 0)
    status = "ok" if m.ok else m.error()
    print(f"  {approach.label} [{tag}]: {tokens / max(seconds, 1e-9) / 1e6:.2f} M tokens/s, {m.wall_s:.1f} s wall, "
          f"RSS {m.peak_rss_mb:.0f} MB; {status}", file=sys.stderr, flush=True)
    return Run(m, tokens, seconds, digests)


HEADERS = ["approach", "M tokens/s", "text MB/s", "vs (a)", "vs best of (b)/(c)", "peak RSS MB", "peak PSS MB",
           "timed s", "wall s", "CPU s", "M tokens", "tokens"]


def report(results: dict[str, Result], text_mb: float) -> list[list[str]]:
    ceiling = results.get("a")
    ceiling_tps = ceiling.tokens_per_s if ceiling else None
    published = [r.tokens_per_s for k, r in results.items() if k[0] in "bc" and r.tokens_per_s]
    best = max(published) if published else None
    reference = ceiling.runs[0].digests if ceiling and ceiling.runs and not ceiling.error else None
    rows = []
    for r in results.values():
        if r.error:
            rows.append([r.approach.label, f"error: {r.error}"] + ["—"] * (len(HEADERS) - 2))
            continue
        tps = r.tokens_per_s
        seconds = r.med(lambda run: run.seconds)
        rows.append([
            r.approach.label, common.num(tps / 1e6, 2), common.num(text_mb / seconds, 2),
            common.ratio(tps, ceiling_tps), common.ratio(tps, best),
            common.num(r.med(lambda run: run.m.peak_rss_mb), 0), common.num(r.med(lambda run: run.m.peak_pss_mb), 0),
            common.num(seconds, 2), common.num(r.med(lambda run: run.m.wall_s), 2),
            common.num(r.med(lambda run: run.m.cpu_s), 1), common.num(r.runs[0].tokens / 1e6, 2),
            agreement(r, reference),
        ])
    return rows


def agreement(r: Result, reference: dict | None) -> str:
    """Whether every run's tokens are (a)'s: same sequence, or same multiset where the order is shuffled."""
    if r.approach.check == "ceiling":
        return "reference" if r.approach.key == "a" else same(r, reference, "sequence")
    return same(r, reference, r.approach.check)


def same(r: Result, reference: dict | None, kind: str) -> str:
    if reference is None:
        return "not checked: (a) did not run"
    if all(run.digests.get(kind) == reference[kind] for run in r.runs):
        return "= (a)" if kind == "sequence" else "= (a), shuffled"
    return "DIFFERENT from (a)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--sample", type=Path, default=common.SAMPLE, help="jsonl of real documents ('text' field)")
    parser.add_argument("--text-mb", type=float, default=64, help="MB of text in the mirror (the sample, repeated)")
    parser.add_argument("--runs", type=int, default=3, help="runs per approach; the table shows medians")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="mirrors and runs live here")
    parser.add_argument("--only", default="a,b,c,d", help="comma-separated approaches to run, from a,b,c,d")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= set("abcd") or args.runs < 1 or args.text_mb <= 0:
        parser.error("--only takes letters from a,b,c,d; --runs and --text-mb must be positive")
    if not args.sample.is_file():
        parser.error(f"--sample {args.sample} does not exist: pass a jsonl file of documents with a 'text' field")
    common.install_cleanup()
    sys.path.insert(0, str(common.REPO / "tests"))  # for mirror.build_mirror

    work = args.work.resolve()
    docs = read_sample(args.sample)
    mirror = ensure_mirror(work, docs, args.text_mb)
    tokenizer = ensure_tokenizer(work, docs)
    text_mb = text_bytes(mirror) / MB

    skipped = cli_skip_reason() if "d" in only else None
    if skipped:
        only.discard("d")
    results = {a.key: Result(a) for a in approaches(only)}
    print("# bench_tokenize: fineweb-edu-dedup to token files\n")
    print(common.machine_summary())
    print(f"- text: {args.sample.name} ({len(docs)} docs) repeated to {text_mb:.1f} MB in {mirror}")
    print(f"- tokenizer: {tokenizer} (byte-level BPE, {VOCAB_SIZE:,} ids)")
    print(f"- medians of {args.runs} run(s); each run a fresh process tree; load average before: {load_average()}\n")
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
        for key, result in results.items():
            result.runs.append(measure(result.approach, mirror, tokenizer, work, f"r{run}"))

    print(common.markdown_table(HEADERS, report(results, text_mb)))
    print(
        "\nM tokens/s and text MB/s: per second of encoding alone for (a), of wall time (start-up, loading and "
        "writing included) for the others. Ratios are of tokens/s. Peak RSS/PSS: whole process tree, sampled "
        "every 50 ms. Tokens: compared with (a)'s, end-of-text before each document; (b) shuffles documents "
        "between train and val, so only its multiset of tokens can match."
    )
    print(f"\nLoad average after the runs: {load_average()} (other work on the machine slows every approach alike).")
    if skipped:
        print(f"\n(d) skipped: {skipped}.")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
