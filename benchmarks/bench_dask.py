"""Benchmark: the same fetch on a Dask cluster of N workers, and on the local pool of N workers.

Everything runs on 127.0.0.1: a ``dask scheduler`` and ``dask worker --nworkers P --nthreads T``
(started before each timed run, as a cluster is up before a user's command, and without Dask's
statistical profiler, as the README recommends for workers of this tool), the delaying
S3-compatible server of ``bench_hydrate.py`` and local parquet mirrors.

(p) python-edu, contents from the server (``--delay-ms``, default 30 ms a request):
    ``fetch python-edu --dask ADDRESS`` with N = each of ``--procs``, and ``--num-proc N`` locally;
    on N worker processes of one thread each, as the local pool runs it;
(t) tokenizing fineweb-shaped text (``bench_tokenize.py``'s mirror and tokenizer), ``--format bin``,
    on Dask and locally, N = 1 and 2: on N worker processes of one thread, and on one worker process
    of N threads, which is how the local pool tokenizes (the tokenizer lets go of the GIL).

Outputs are compared byte for byte between Dask and local. The command's wall time is timed;
a local run's includes starting its worker processes, a Dask run's does not (the workers are up).

    .venv/bin/python benchmarks/bench_dask.py
    .venv/bin/python benchmarks/bench_dask.py --blobs 4000 --procs 1,2 --only p
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import bench_hydrate  # noqa: E402
import bench_tokenize  # noqa: E402
import common  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))
SCALING_TARGET = 0.8  # blobs/s with N processes at least this share of N times one process's, while cores last
OVERHEAD_TARGET = 1.10  # Dask at most this many times the local pool's wall time


class Cluster:
    """``dask scheduler`` and ``dask worker --nworkers N --nthreads T`` on 127.0.0.1."""

    def __init__(self, work: Path, nworkers: int, env: dict[str, str], nthreads: int = 1) -> None:
        self.folder = work / f"cluster-{nworkers}x{nthreads}"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        scheduler_file = self.folder / "scheduler.json"
        self.procs = [common.start_group([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                          "--scheduler-file", str(scheduler_file)], env, self.folder / "scheduler.log")]
        for _ in range(600):
            if scheduler_file.exists():
                break
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        env = {**env, "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
        self.procs.append(common.start_group(
            [DASK, "worker", self.address, "--host", "127.0.0.1", "--nworkers", str(nworkers), "--nthreads", str(nthreads),
             "--no-dashboard", "--local-directory", str(self.folder / "scratch")], env, self.folder / "workers.log"))
        import distributed

        with distributed.Client(self.address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(nworkers, timeout=120)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            common.kill_group(proc.pid)
            proc.wait()


def digest(folder: Path) -> str:
    """One hash over every output file of a fetch (not the manifest, whose timings differ)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("manifest.json", ".lock")):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def measure(tag: str, cmd: list[str], env: dict[str, str], work: Path) -> tuple[common.Measurement, str]:
    run_dir = work / "runs" / tag
    out = run_dir / "out"
    shutil.rmtree(run_dir, ignore_errors=True)
    out.mkdir(parents=True)
    m = common.run_measured([*cmd, "-o", str(out), "-q"], env=env, log=run_dir / "log.txt", timeout_s=1800)
    result = digest(out) if m.ok else ""
    shutil.rmtree(out)
    print(f"  {tag}: {m.wall_s:.2f} s, this process's CPU {m.cpu_s:.1f} s; {'ok' if m.ok else m.error()}",
          file=sys.stderr, flush=True)
    return m, result


def compare(name: str, base: list[str], env: dict[str, str], procs: list[int], runs: int, work: Path,
            rows: int, layouts, cpu_bound: bool = False) -> tuple[list[list[str]], list[str]]:
    """Local against Dask for each N: table rows and target lines.

    ``layouts(n)`` gives the Dask workers to try as (processes, threads each); the first is the one
    held to the target, as it runs the work as the local pool does.
    """
    table, checks, per_n = [], [], {}
    for n in procs:
        shapes = layouts(n)
        clusters = []
        try:
            for processes, threads in shapes:
                clusters.append(Cluster(work, processes, env, threads))
            modes = [("local", ["--num-proc", str(n)])] + [
                (f"{p}x{t}", ["--dask", c.address]) for (p, t), c in zip(shapes, clusters)]
            walls: dict[str, list[float]] = {where: [] for where, _ in modes}
            digests = set()
            for r in range(runs):
                # each round's runs are back to back, in an order that turns each round, so that their
                # ratios are immune to the machine's speed drifting (the same single-threaded run measured
                # 12 to 26 s here within minutes) and to a run's place in the round
                for where, extra in modes[r % len(modes):] + modes[:r % len(modes)]:
                    m, result = measure(f"{name}-{where}-{n}-{r}", [*base, *extra], env, work)
                    if not m.ok:
                        raise SystemExit(f"{name} {where} N={n} failed; see {m.log}")
                    walls[where].append(m.wall_s)
                    digests.add(result)
        finally:
            for cluster in clusters:
                cluster.stop()
        local = common.median(walls["local"])
        for i, (processes, threads) in enumerate(shapes):
            where = f"{processes}x{threads}"
            dask = common.median(walls[where])
            paired = common.median([d / l for d, l in zip(walls[where], walls["local"])])
            table.append([name, str(n), f"{processes} x {threads}", f"{local:.2f}", f"{dask:.2f}",
                          f"{rows / local:,.0f}", f"{rows / dask:,.0f}", f"{dask / local:.2f}x", f"{paired:.2f}x",
                          "yes" if len(digests) == 1 else "NO"])
            if i == 0:  # the shape held to the targets
                per_n[n] = dask
                checks.append(common.check(
                    f"{name}, N={n}: Dask ({processes} x {threads}) at most {OVERHEAD_TARGET:.2f}x the local pool's "
                    "time (median of the rounds' ratios)", paired <= OVERHEAD_TARGET, f"{paired:.2f}x"))
        checks.append(common.check(f"{name}, N={n}: the same bytes on Dask and locally", len(digests) == 1,
                                   f"{len(digests)} distinct output(s)"))
    cores = os.cpu_count() or 1
    one = per_n.get(1)
    for n in procs:
        if one and 1 < n <= cores:
            scaling = one / per_n[n] / n
            if cpu_bound:
                checks.append(f"NOTE  {name}: Dask rows/s with {n} workers {scaling:.2f}x {n} times one's (not a "
                              f"target: the work is CPU-bound, and {n} workers fill this machine's {cores} cores)")
                continue
            checks.append(common.check(f"{name}: Dask rows/s with {n} workers at least {SCALING_TARGET}x {n} times one's",
                                       scaling >= SCALING_TARGET, f"{scaling:.2f}x of linear"))
    return table, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench-dask"), help="inputs and scratch")
    parser.add_argument("--blobs", type=int, default=32000, help="(p) python-edu rows (4,096 a chunk)")
    parser.add_argument("--delay-ms", type=float, default=30.0, help="(p) the server's delay before each answer")
    parser.add_argument("--procs", default="1,2,4", help="(p) worker processes to compare, comma-separated")
    parser.add_argument("--text-mb", type=float, default=160.0, help="(t) MB of text to tokenize")
    parser.add_argument("--tprocs", default="1,2", help="(t) workers to compare, comma-separated")
    parser.add_argument("--sample", type=Path, default=common.SAMPLE, help="(t) jsonl with a text field")
    parser.add_argument("--runs", type=int, default=3, help="rounds of a local run then a Dask run; medians reported")
    parser.add_argument("--only", default="p,t", help="which of p,t to run")
    args = parser.parse_args()
    common.install_cleanup()
    args.work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    cli = str(common.cli_path() or "smollm-corpus")
    scratch = args.work / "scratch"
    tables, checks = [], []

    if "p" in only:
        blobs = bench_hydrate.ensure_blobs(args.work, args.blobs)
        mirror = bench_hydrate.ensure_mirror(args.work, blobs)
        server = bench_hydrate.Server(args.work, blobs, args.delay_ms)
        env = common.base_env(scratch, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                              AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        try:
            base = [cli, "fetch", "python-edu", "--source", str(mirror), "--s3-endpoint-url", server.url]
            rows, found = compare("python-edu", base, env, [int(n) for n in args.procs.split(",")], args.runs,
                                  args.work, args.blobs, lambda n: [(n, 1)])
        finally:
            server.stop()
        tables += rows
        checks += found

    if "t" in only:
        docs = bench_tokenize.read_sample(args.sample)
        mirror = bench_tokenize.ensure_mirror(args.work, docs, args.text_mb)
        tokenizer = bench_tokenize.ensure_tokenizer(args.work, docs)
        env = common.base_env(scratch, AWS_EC2_METADATA_DISABLED="true")
        base = [cli, "fetch", "fineweb-edu-dedup", "--source", str(mirror), "--format", "bin", "--tokenizer", str(tokenizer)]
        rows_read = sum(1 for _ in docs) and int(args.text_mb * 1e6 / (sum(len(d.encode()) for d in docs) / len(docs)))
        # N worker processes of one thread, as the target says; and one process of N threads, the way the
        # local pool tokenizes
        rows, found = compare("tokenize (bin)", base, env, [int(n) for n in args.tprocs.split(",")], args.runs, args.work, rows_read,
                              lambda n: [(n, 1), (1, n)] if n > 1 else [(1, 1)], cpu_bound=True)
        tables += rows
        checks += found

    print()
    print(common.machine_summary())
    print(f"python-edu: {args.blobs:,} blobs, {args.delay_ms:g} ms a request; tokenizing: {args.text_mb:g} MB of text; "
          f"median of {args.runs} run(s)")
    print()
    print(common.markdown_table(["fetch", "N", "Dask workers x threads", "local s", "Dask s", "local rows/s", "Dask rows/s", "Dask / local",
                                 "Dask / local, paired", "same bytes"], tables))
    print()
    for line in checks:
        print(line)


if __name__ == "__main__":
    main()
