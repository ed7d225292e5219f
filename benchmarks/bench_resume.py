"""Benchmark: what a resume costs once most of the output is written.

On a fineweb-shaped mirror whose output passes 1 GB:
(w) a whole, uninterrupted ``smollm-corpus fetch``;
(k) the same fetch killed with SIGKILL once its checkpoints record ``--kill-at`` of the output;
(r) the rerun that finishes (k).
Start-up (a ``--limit 1`` fetch of the same mirror) is taken off (w) and (r): the target is
(r)'s work at most 15% of (w)'s when 90% was written. The resumed output must be byte-identical
to (w)'s, and its manifest's sha256 that of the file. For comparison, the table also shows how
long reading back and hashing the part already written takes: what every resume cost when the
hash could not be taken up from the checkpoint.

    .venv/bin/python benchmarks/bench_resume.py                 # 4 files of 200 MB, 3 runs
    .venv/bin/python benchmarks/bench_resume.py --file-mb 40 --runs 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_export import TextRows, describe_mirror, ensure_mirror  # noqa: E402
from common import MB  # noqa: E402

SUBSET = "fineweb-edu-dedup"
RUN_TIMEOUT_S = 1800


def fetch_command(mirror: Path, out: Path, *extra: str) -> list[str]:
    return [str(common.cli_path()), "fetch", SUBSET, "--source", str(mirror), "-o", str(out), "-q", *extra]


def kill_when_written(mirror: Path, out: Path, env: dict[str, str], log: Path, bytes_at: int) -> int:
    """Start a fetch and SIGKILL it once a checkpoint records ``bytes_at`` bytes; returns the bytes recorded."""
    proc = common.start_group(fetch_command(mirror, out), env, log)
    manifest = out / SUBSET / "manifest.json"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            recorded = json.loads(manifest.read_text())["bytes"]
        except (FileNotFoundError, ValueError, KeyError):
            recorded = 0
        if recorded >= bytes_at:
            break
        time.sleep(0.005)
    common.kill_group(proc.pid)
    proc.wait()
    if recorded < bytes_at:
        raise SystemExit(f"the fetch ended before {bytes_at:,} bytes were recorded; see {log}")
    return recorded


def read_back_seconds(path: Path, length: int) -> float:
    """Wall time to read and hash the first ``length`` bytes of ``path`` (from the page cache)."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left:
            block = f.read(min(8 << 20, left))
            digest.update(block)
            left -= len(block)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each step; the table shows medians")
    parser.add_argument("--file-mb", type=float, default=200, help="size of each parquet file, MB")
    parser.add_argument("--files", type=int, default=4, help="parquet files in the mirror")
    parser.add_argument("--kill-at", type=float, default=0.9, help="fraction of the output written when killed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="mirrors and runs live here")
    args = parser.parse_args()
    if common.cli_path() is None:
        parser.error("smollm-corpus is not installed in this environment")
    common.install_cleanup()
    sys.path.insert(0, str(common.REPO / "tests"))  # for mirror.build_mirror
    work = args.work.resolve()
    pool = common.text_pool()
    mirror = ensure_mirror(work, SUBSET, args.files, args.file_mb, TextRows(pool))

    print("# bench_resume: a fetch killed near its end, then rerun\n")
    print(common.machine_summary())
    print(f"- text: {pool.source}; mirror: {describe_mirror(mirror, SUBSET)}")
    print(f"- medians of {args.runs} run(s); killed with SIGKILL at {args.kill_at:.0%} of the output\n")

    walls: dict[str, list[float]] = {"startup": [], "whole": [], "rerun": [], "read back": []}
    reference = None
    recorded_fraction = []
    for run in range(args.runs):
        run_dir = work / "runs" / f"resume-r{run}"
        shutil.rmtree(run_dir, ignore_errors=True)
        env = common.base_env(run_dir / "scratch")
        m = common.run_measured(fetch_command(mirror, run_dir / "whole"), env=env, log=run_dir / "whole.log",
                                timeout_s=RUN_TIMEOUT_S)
        if not m.ok:
            raise SystemExit(f"the whole run failed: {m.error()}")
        walls["whole"].append(m.wall_s)
        m = common.run_measured(fetch_command(mirror, run_dir / "startup", "--limit", "1"), env=env,
                                log=run_dir / "startup.log")  # after (w): the same warm page cache
        walls["startup"].append(m.wall_s)
        whole = run_dir / "whole" / SUBSET / "input.txt"
        size = whole.stat().st_size
        if reference is None:
            reference = hashlib.sha256(whole.read_bytes()).hexdigest()
        shutil.rmtree(run_dir / "whole")

        out = run_dir / "resumed"
        recorded = kill_when_written(mirror, out, env, run_dir / "killed.log", int(size * args.kill_at))
        recorded_fraction.append(recorded / size)
        walls["read back"].append(read_back_seconds(out / SUBSET / "input.txt.incomplete", recorded))
        m = common.run_measured(fetch_command(mirror, out), env=env, log=run_dir / "rerun.log", timeout_s=RUN_TIMEOUT_S)
        if not m.ok:
            raise SystemExit(f"the rerun failed: {m.error()}")
        walls["rerun"].append(m.wall_s)
        resumed = out / SUBSET / "input.txt"
        manifest = json.loads((out / SUBSET / "manifest.json").read_text())
        actual = hashlib.sha256(resumed.read_bytes()).hexdigest()
        if actual != reference or manifest["sha256"] != actual:
            raise SystemExit("the resumed output differs from the whole run's, or its manifest's sha256 is wrong")
        print(f"  run {run + 1}: whole {walls['whole'][-1]:.2f} s, killed at {recorded / size:.1%}, rerun "
              f"{walls['rerun'][-1]:.2f} s, identical", file=sys.stderr, flush=True)
        shutil.rmtree(run_dir)

    startup = common.median(walls["startup"])
    whole_work = common.median(walls["whole"]) - startup
    rerun_work = common.median(walls["rerun"]) - startup
    read_back = common.median(walls["read back"])
    rows = [
        ["(w) whole run", common.num(common.median(walls["whole"]), 2), common.num(whole_work, 2), "1.00x"],
        [f"(r) rerun after a kill at {common.median(recorded_fraction):.0%}", common.num(common.median(walls["rerun"]), 2),
         common.num(rerun_work, 2), common.ratio(rerun_work, whole_work)],
        ["reading back and hashing what (k) wrote", "—", common.num(read_back, 2), common.ratio(read_back, whole_work)],
    ]
    print(common.markdown_table(["step", "wall s", "work s (wall - start-up)", "work vs (w)"], rows))
    print(f"\nstart-up (a --limit 1 fetch): {startup:.2f} s; output {size / MB:,.0f} MB; every resumed output "
          "byte-identical to the whole run's, manifest sha256 = sha256 of the file\n")
    print(common.check("(r) work <= 15% of (w) work", rerun_work <= 0.15 * whole_work,
                       f"{rerun_work:.2f} s vs 0.15 x {whole_work:.2f} s = {0.15 * whole_work:.2f} s"))


if __name__ == "__main__":
    main()
