"""Shared helpers of the benchmarks: measured subprocesses, disk usage, medians, tables, realistic text.

Imports only the standard library, so that a child importing a benchmark module to run one
approach loads nothing the approach itself does not load.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SAMPLE = REPO.parent / "shared" / "data" / "fineweb-edu-sample.jsonl"
MB = 1e6
TIME = Path("/usr/bin/time")
#: process groups still running, killed if the benchmark exits early
_live_groups: set[int] = set()


def _kill_live_groups() -> None:
    for pgid in list(_live_groups):
        kill_group(pgid)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group this benchmark started; gone already is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _live_groups.discard(pgid)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Kill every child process group on any exit, including SIGTERM and Ctrl-C."""
    atexit.register(_kill_live_groups)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def start_group(cmd: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so the whole tree can be killed) with output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _live_groups.add(proc.pid)
    return proc


def base_env(scratch: Path, **extra: str) -> dict[str, str]:
    """Environment for a measured child: every cache and temp dir inside ``scratch``, no network."""
    env = dict(os.environ)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    dirs = {
        "HF_HOME": scratch / "hf",
        "HF_DATASETS_CACHE": scratch / "hf" / "datasets",
        "TMPDIR": scratch / "tmp",
        "XDG_CACHE_HOME": scratch / "xdg-cache",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env.update(
        AWS_EC2_METADATA_DISABLED="true",  # boto3 otherwise probes 169.254.169.254 for credentials
        NO_PROXY="127.0.0.1,localhost",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def python_call(module: str, func: str, **kwargs: object) -> list[str]:
    """argv running ``module.func(**kwargs)`` from this folder in a fresh interpreter."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import {module}; "
        f"{module}.{func}(**json.loads(sys.argv[1]))"
    )
    return [sys.executable, "-c", code, json.dumps(kwargs)]


def cli_path() -> Path | None:
    """The project's console script, preferring the repository's own virtualenv."""
    local = REPO / ".venv" / "bin" / "smollm-corpus"
    if local.exists():
        return local
    found = shutil.which("smollm-corpus")
    return Path(found) if found else None


def disk_usage(path: Path) -> int:
    """Bytes allocated to files under ``path`` (0 if it does not exist); tolerates files vanishing.

    Folders themselves are not counted: the empty cache folders every run starts with would
    otherwise show as a few kB of "extra disk".
    """
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def output_size(path: Path) -> int:
    """Bytes of the ``input.*`` files under ``path``: the output, without manifests or locks."""
    return sum(p.stat().st_size for p in path.rglob("input.*") if p.is_file())


def find_files(path: Path, suffix: str) -> list[Path]:
    return sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())


# ---------------------------------------------------------------------------------------------
# measured runs


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return kids


def _tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack and len(pids) < 10_000:
        p = stack.pop()
        pids.append(p)
        stack.extend(_children(p))
    return pids


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process; (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0, 0
    rss = re.search(r"^Rss:\s+(\d+) kB", text, re.M)
    pss = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return (int(rss.group(1)) * 1024 if rss else 0, int(pss.group(1)) * 1024 if pss else 0)


class _Sampler(threading.Thread):
    """Samples the summed RSS and PSS of a process tree, and the disk usage of some folders."""

    def __init__(self, pid: int, watch: Sequence[Path], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.watch, self.interval = pid, list(watch), interval
        self.peak_rss = self.peak_pss = self.peak_disk = 0
        self.stopped = threading.Event()

    def sample_disk(self) -> None:
        self.peak_disk = max(self.peak_disk, sum(disk_usage(p) for p in self.watch))

    def run(self) -> None:
        ticks = 0
        while not self.stopped.is_set():
            rss = pss = 0
            for p in _tree(self.pid):
                r, s = _memory(p)
                rss, pss = rss + r, pss + s
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            if ticks % 10 == 0:  # walking folders costs more than reading /proc: every 0.5 s
                self.sample_disk()
            ticks += 1
            self.stopped.wait(self.interval)


@dataclass
class Measurement:
    """One measured run of a command and its whole process tree."""

    wall_s: float
    cpu_s: float  # user + sys of the process and every descendant it waited for
    peak_rss_mb: float  # peak of the tree's summed RSS (forked workers count shared pages twice)
    peak_pss_mb: float  # peak of the tree's summed PSS (shared pages split between sharers)
    peak_disk_mb: float  # peak disk usage of the watched folders
    final_disk_mb: float  # what the watched folders hold once the run is over
    returncode: int
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error(self) -> str:
        """Last meaningful line of the run's output, for a table cell."""
        lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        return f"exit {self.returncode}: {last[:120]}"


def run_measured(
    cmd: Sequence[str], *, env: dict[str, str], log: Path, watch: Sequence[Path] = (), timeout_s: float = 1800
) -> Measurement:
    """Run ``cmd`` to completion (killed after ``timeout_s``) measuring wall, CPU, memory and disk."""
    timed = log.with_suffix(".time")
    if TIME.exists():
        # GNU time forks the command from a small process: the command's own ru_maxrss is not
        # inflated by this (large) parent's memory, which a fork from here would carry over
        cmd = [str(TIME), "-f", "%M", "-o", str(timed), *cmd]
    start = time.perf_counter()
    try:
        proc = start_group(cmd, env, log)
    except OSError as exc:  # e.g. the command is not installed
        log.write_text(f"cannot run {cmd[0]}: {exc}\n")
        return Measurement(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 127, log)
    sampler = _Sampler(proc.pid, watch)
    sampler.start()
    timer = threading.Timer(timeout_s, kill_group, args=(proc.pid,))
    timer.start()
    try:
        # wait4 rather than Popen.wait: its rusage covers the process and all descendants it reaped
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        wall = time.perf_counter() - start
        timer.cancel()
        sampler.stopped.set()
        sampler.join()
        kill_group(proc.pid)  # stragglers the child left behind
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.sample_disk()
    final_disk = sum(disk_usage(p) for p in watch)
    max_rss_kb = 0
    if timed.exists():
        lines = timed.read_text().split()
        max_rss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return Measurement(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        # the largest single process's ru_maxrss catches a spike shorter than the sampling interval
        peak_rss_mb=max(sampler.peak_rss, max_rss_kb * 1024) / MB,
        peak_pss_mb=sampler.peak_pss / MB,
        peak_disk_mb=sampler.peak_disk / MB,
        final_disk_mb=final_disk / MB,
        returncode=proc.returncode,
        log=log,
    )


# ---------------------------------------------------------------------------------------------
# reporting


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the module docstring's layout and shows each option's default."""


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(value: float | None, reference: float | None) -> str:
    """``value / reference`` formatted for a table, or n/a."""
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def check(name: str, passed: bool | None, detail: str) -> str:
    """One target line: PASS, FAIL, or SKIP when its inputs were not measured."""
    verdict = "SKIP" if passed is None else ("PASS" if passed else "FAIL")
    return f"{verdict}  {name}: {detail}"


def machine_summary() -> str:
    """Cores, memory, OS, Python and library versions, and the date, as markdown lines."""
    from importlib import metadata

    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = []
    for dist in ("datasets", "pyarrow", "pandas", "boto3", "smollm-corpus"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return "\n".join(
        [
            f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {os.cpu_count()} cores, {mem_kb / 1024**2:.1f} GiB RAM, {platform.platform()}",
            f"- python {platform.python_version()}; " + ", ".join(versions),
        ]
    )


# ---------------------------------------------------------------------------------------------
# realistic text

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more can who what some into about time only new other could than its also after two first "
    "because most these many such people may between over well even through where much those "
    "how under used while each same both during without however known often form water energy "
    "students learning history science system children development different important example "
    "process research health number study school world century early government public human "
    "information change language area data teachers support natural body plants cells animals "
    "species climate students' community program life light cell model theory environment "
    "experience understanding activity growth chemical reaction earth temperature surface "
    "evidence population disease treatment patients blood brain heart muscle structure function "
    "analysis method result level value material particular several within various including"
).split()


def _synthetic_sentences(rng: random.Random, count: int) -> list[str]:
    """English-like sentences from a Zipf-weighted vocabulary, for machines without the sample."""
    weights = [1 / (rank + 1) for rank in range(len(_WORDS))]
    sentences = []
    for _ in range(count):
        words = rng.choices(_WORDS, weights, k=rng.randint(6, 28))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), f"{rng.randint(2, 2024)}")
        if rng.random() < 0.2:
            words[rng.randrange(len(words))] += ","
        sentences.append(" ".join(words).capitalize() + rng.choice(".....?!"))
    return sentences


@dataclass(frozen=True)
class TextPool:
    """Sentences and document lengths to compose unique, realistic documents from."""

    sentences: tuple[str, ...]
    doc_lengths: tuple[int, ...]  # characters per document, real spread
    source: str

    @property
    def mean_length(self) -> float:
        return sum(self.doc_lengths) / len(self.doc_lengths)

    def document(self, rng: random.Random, mean_chars: float) -> str:
        """A document of paragraphs of shuffled sentences, length drawn from the real spread."""
        scale = mean_chars / self.mean_length
        target = max(80, int(rng.choice(self.doc_lengths) * scale * rng.uniform(0.8, 1.25)))
        paragraphs, size = [], 0
        while size < target:
            para = " ".join(rng.choices(self.sentences, k=rng.randint(1, 6)))
            paragraphs.append(para)
            size += len(para) + 1
        return "\n".join(paragraphs)

    def words(self) -> list[str]:
        """Distinct lowercase words, e.g. for identifiers."""
        found = {w.lower() for s in self.sentences for w in re.findall(r"[A-Za-z]{3,12}", s)}
        return sorted(found)


def text_pool(seed: int = 0) -> TextPool:
    """Real fineweb-edu sentences when the shared sample exists, generated ones otherwise."""
    rng = random.Random(seed)
    if SAMPLE.exists():
        docs = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line]
        sentences = [
            s.strip()
            for doc in docs
            for para in doc.split("\n")
            for s in re.split(r"(?<=[.!?])\s+", para)
            if len(s.strip()) > 1
        ]
        return TextPool(tuple(sentences), tuple(len(d) for d in docs), f"{SAMPLE.name} ({len(docs)} docs)")
    lengths = tuple(int(rng.lognormvariate(7.6, 0.8)) for _ in range(500))
    return TextPool(tuple(_synthetic_sentences(rng, 5000)), lengths, "generated English-like text")
