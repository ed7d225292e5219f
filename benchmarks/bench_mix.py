"""Benchmark: a weighted mixture of two subsets, ``smollm-corpus mix`` against the hand-made way.

Data, built once under --work: a local folder laid out like HuggingFaceTB/smollm-corpus with
fineweb-edu-dedup and cosmopedia-v2 (the published schemas, realistic documents as in
bench_export.py: sentences of the fineweb-edu sample, about 5 KB of text on average, generated
English-like text without the sample), --size MB of parquet in all, split 70/30 between them,
--files parquet files each, row groups of 1,000 rows (the `datasets` writer default).

Both make fineweb-edu-dedup=0.7 cosmopedia-v2=0.3 as jsonl, at a budget of --budget-mb MB
and at --larger times that:

(a) ours: ``smollm-corpus mix fineweb-edu-dedup=0.7 cosmopedia-v2=0.3 --bytes B --format jsonl
    --source MIRROR -o OUT -q``, default options;
(b) the hand-made way, with the same Python: per subset ``datasets.load_dataset(MIRROR, subset,
    split="train")``, its rows through a shuffle buffer of --buffer rows (``random.Random(seed)``,
    as streaming loaders shuffle), documents taken from it until they hold the subset's weight of
    the budget in jsonl bytes; then both lists concatenated, ``random.shuffle``d in memory and
    written as jsonl.

Each runs once in a fresh process tree; wall, CPU, peak RSS and the peak size of its cache
and temp folders are measured from outside. Printed: time and memory at both budgets (target:
ours under 1 GB, and at most 1.25x from the budget to --larger times it); the realised shares of
the output's bytes (target: within 1% of the weights); interleaving, the fineweb-edu-dedup share
of every window of 1% of the output (target: within 0.1 of 0.7); where the documents come from
(distinct files and row groups per subset); and the source bytes each reads (ours: the drawn
row groups; the hand-made way: every file, into its Arrow cache).

    .venv/bin/python benchmarks/bench_mix.py                          # ~40 s on 2 cores, +10 s to build the data once
    .venv/bin/python benchmarks/bench_mix.py --size 40 --budget-mb 4   # a quick look
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, Measurement  # noqa: E402

WEIGHTS = {"fineweb-edu-dedup": 0.7, "cosmopedia-v2": 0.3}
FINEWEB = "fineweb-edu-dedup"
#: rows per row group: the `datasets` writer default when the corpus was pushed
ROW_GROUP_ROWS = 1000
#: realised shares at most this far from the weights, relative to the weight
SHARE_TOLERANCE = 0.01
#: every window of WINDOW_SHARE of the output holds fineweb-edu-dedup within WINDOW_TOLERANCE of its weight
WINDOW_SHARE, WINDOW_TOLERANCE = 0.01, 0.1
#: peak RSS at the larger budget at most this many times that at --budget-mb counts as flat
FLAT_RSS = 1.25
RUN_TIMEOUT_S = 1800
MIRROR_VERSION = 1


# ---------------------------------------------------------------------------------------------
# the mirror


def build(work: Path, size_mb: float, files: int) -> Path:
    """The mirror under ``work``, built once: ``size_mb`` MB of parquet, split between the subsets by weight."""
    from bench_export import TextRows, rows_per_file

    sys.path.insert(0, str(common.REPO / "tests"))
    from mirror import build_mirror

    pool = common.text_pool()
    tag = "fineweb" if pool.source.startswith(common.SAMPLE.name) else "generated"
    root = work / "mirrors" / f"mix-v{MIRROR_VERSION}-{size_mb:g}mb-{files}files-{tag}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    rows = TextRows(pool)
    layout = {subset: [rows_per_file(rows, subset, size_mb * weight / files)] * files
              for subset, weight in WEIGHTS.items()}
    print(f"building {root} ({', '.join(f'{s}: {files} x {n[0]:,} rows' for s, n in layout.items())}) ...",
          file=sys.stderr, flush=True)
    build_mirror(root, layout, row_group_size=ROW_GROUP_ROWS, rows=rows)
    (root / ".complete").write_text(json.dumps({"text": pool.source}))  # written last: a half-built mirror is rebuilt
    print(f"built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return root


class Layout:
    """Files and row groups of each subset of the mirror, from the parquet footers."""

    def __init__(self, root: Path) -> None:
        import pyarrow.parquet as pq

        self.root = root
        self.text = json.loads((root / ".complete").read_text())["text"]
        #: subset -> [(file name as in the manifest, [(first row, end row, compressed bytes), ...]), ...]
        self.files: dict[str, list[tuple[str, list[tuple[int, int, int]]]]] = {}
        self.sizes: dict[str, int] = {}  # bytes of parquet per subset
        for subset in WEIGHTS:
            self.files[subset] = []
            for path in sorted((root / subset).glob("train-*.parquet")):
                meta = pq.ParquetFile(path).metadata
                groups, start = [], 0
                for g in range(meta.num_row_groups):
                    group = meta.row_group(g)
                    stored = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
                    groups.append((start, start + group.num_rows, stored))
                    start += group.num_rows
                self.files[subset].append((f"{subset}/{path.name}", groups))
            self.sizes[subset] = sum(p.stat().st_size for p in (root / subset).glob("train-*.parquet"))

    def rows(self, subset: str) -> int:
        return sum(groups[-1][1] for _, groups in self.files[subset] if groups)

    def row_groups(self, subset: str) -> int:
        return sum(len(groups) for _, groups in self.files[subset])

    def locate(self, subset: str, row: int) -> tuple[str, int]:
        """(file, row group index in it) of a row of the subset, counting rows across its files in order."""
        for name, groups in self.files[subset]:
            rows = groups[-1][1] if groups else 0
            if row < rows:
                return name, bisect.bisect_right([start for start, _, _ in groups], row) - 1
            row -= rows
        raise IndexError(f"{subset} has no row {row}")

    def group(self, name: str, start: int, stop: int) -> list[tuple[str, int]]:
        """The row groups of a file that rows ``start`` to ``stop`` of it cover."""
        subset = name.split("/")[0]
        groups = dict(self.files[subset])[name]
        return [(name, g) for g, (a, b, _) in enumerate(groups) if a < stop and start < b]

    def stored(self, name: str, group: int) -> int:
        return dict(self.files[name.split("/")[0]])[name][group][2]

    def describe(self) -> str:
        parts = []
        for subset in WEIGHTS:
            files = self.files[subset]
            parts.append(f"{subset}: {len(files)} files, {self.rows(subset):,} rows, {self.row_groups(subset)} row "
                         f"groups, {self.sizes[subset] / MB:.0f} MB of parquet")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# (b) the hand-made way, run in a fresh interpreter through common.python_call


def _iso(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def shuffle_buffer(rows, size: int, rng: random.Random):
    """(index, row) pairs of ``rows`` in the order of a ``size``-row shuffle buffer, as streaming loaders shuffle."""
    buffer: list = []
    for item in enumerate(rows):
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def run_handmade(source: str, out: str, budget: int, seed: int, buffer: int) -> None:
    """Each subset's weight of ``budget`` bytes through a shuffle buffer, all concatenated, shuffled, written."""
    from datasets import load_dataset

    rng = random.Random(seed)
    mixed = []
    for subset, weight in WEIGHTS.items():
        ds = load_dataset(source, subset, split="train")
        target, taken = weight * budget, 0
        for index, row in shuffle_buffer(ds, buffer, rng):
            if taken >= target:
                break
            taken += len(json.dumps(row, ensure_ascii=False, default=_iso).encode()) + 1
            mixed.append((subset, index, row))
    rng.shuffle(mixed)
    with open(Path(out) / "input.jsonl", "w", encoding="utf-8") as f:
        for _, _, row in mixed:
            f.write(json.dumps(row, ensure_ascii=False, default=_iso) + "\n")
    # for the benchmark only: which row of which subset each line is
    (Path(out) / "provenance.json").write_text(json.dumps([[subset, index] for subset, index, _ in mixed]))


# ---------------------------------------------------------------------------------------------
# measuring


def ours_command(mirror: Path, out: Path, budget: int, seed: int) -> list[str]:
    cli = common.cli_path()
    start = [str(cli)] if cli else [sys.executable, "-m", "smollm_corpus"]
    return [*start, "mix", *(f"{name}={weight}" for name, weight in WEIGHTS.items()), "--bytes", str(budget),
            "--format", "jsonl", "--seed", str(seed), "--source", str(mirror), "-o", str(out), "-q"]


def handmade_command(mirror: Path, out: Path, budget: int, seed: int, buffer: int) -> list[str]:
    return common.python_call("bench_mix", "run_handmade", source=str(mirror), out=str(out), budget=budget,
                              seed=seed, buffer=buffer)


def measure(key: str, command: list[str], out: Path, run: Path, layout: Layout) -> dict:
    """One fresh-process run, then what its output holds; output and scratch are deleted, the log kept."""
    scratch = run / "scratch"
    m = common.run_measured(command, env=common.base_env(scratch), log=run / "log.txt", watch=[scratch],
                            timeout_s=RUN_TIMEOUT_S)
    result: dict = {"measured": m}
    if not m.ok:
        result["error"] = f"{m.error()} (log: {m.log})"
    else:
        try:
            result.update(read_output(out / "input.jsonl"))
            result.update(read_ours(out, layout) if key == "ours" else read_handmade(out, layout))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            result["error"] = f"output not as expected: {type(exc).__name__}: {exc} (in {out})"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    status = result.get("error", "ok")
    print(f"  {m.wall_s:.1f} s, CPU {m.cpu_s:.1f} s, RSS {m.peak_rss_mb:.0f} MB; {status}", file=sys.stderr, flush=True)
    return result


def read_output(path: Path) -> dict:
    """Bytes per subset, and the fineweb-edu-dedup share of every window of WINDOW_SHARE of the bytes."""
    ends, fineweb_before = [0], [0]  # per line: end offset, fineweb-edu-dedup bytes up to its start
    is_fineweb = []
    with open(path, "rb") as f:
        for line in f:
            fineweb = "prompt" not in json.loads(line)  # cosmopedia-v2 rows have a prompt, fineweb-edu-dedup's not
            is_fineweb.append(fineweb)
            fineweb_before.append(fineweb_before[-1] + (len(line) if fineweb else 0))
            ends.append(ends[-1] + len(line))
    total = ends[-1]

    def fineweb_upto(offset: float) -> float:
        """fineweb-edu-dedup bytes in the first ``offset`` bytes, counting a line cut by it pro rata."""
        line = min(bisect.bisect_right(ends, offset) - 1, len(is_fineweb) - 1)
        inside = offset - ends[line] if is_fineweb[line] else 0
        return fineweb_before[line] + inside

    count = round(1 / WINDOW_SHARE)
    bounds = [fineweb_upto(total * k / count) for k in range(count + 1)]
    shares = [(b - a) / (total / count) for a, b in zip(bounds, bounds[1:])]
    documents = {FINEWEB: sum(is_fineweb), "cosmopedia-v2": len(is_fineweb) - sum(is_fineweb)}
    fineweb_bytes = fineweb_before[-1]
    return {
        "total": total, "documents": documents,
        "bytes": {FINEWEB: fineweb_bytes, "cosmopedia-v2": total - fineweb_bytes},
        "windows": shares, "window_bytes": total / count,
    }


def read_ours(out: Path, layout: Layout) -> dict:
    """Row groups drawn per subset (from the manifest), the source bytes they hold, the manifest's own counts."""
    manifest = json.loads((out / "manifest.json").read_text())
    drawn, manifest_bytes = {}, {}
    for spec in manifest["inputs"]:
        groups = {g for name, start, stop in spec["row_groups"] for g in layout.group(name, start, stop)}
        drawn[spec["name"]] = groups
        manifest_bytes[spec["name"]] = spec["bytes"]
    return {"drawn": drawn, "manifest_bytes": manifest_bytes,
            "read": sum(layout.stored(name, g) for groups in drawn.values() for name, g in groups)}


def read_handmade(out: Path, layout: Layout) -> dict:
    """Row groups its documents come from; it reads every file of both subsets."""
    drawn: dict[str, set] = {subset: set() for subset in WEIGHTS}
    for subset, index in json.loads((out / "provenance.json").read_text()):
        drawn[subset].add(layout.locate(subset, index))
    return {"drawn": drawn, "read": sum(layout.sizes.values())}


# ---------------------------------------------------------------------------------------------
# reporting


def realised(result: dict) -> dict[str, float]:
    return {subset: result["bytes"][subset] / result["total"] for subset in WEIGHTS}


def share_ok(result: dict) -> bool:
    return all(abs(share - WEIGHTS[s]) <= SHARE_TOLERANCE * WEIGHTS[s] for s, share in realised(result).items())


def worst_window(result: dict) -> float:
    return max(abs(share - WEIGHTS[FINEWEB]) for share in result["windows"])


def speed_rows(results: dict, ref: dict) -> list[list[object]]:
    rows = []
    for (key, budget), r in results.items():
        m: Measurement = r["measured"]
        base = ref.get(budget)
        base_rss = base["measured"].peak_rss_mb if base and "error" not in base else None
        label = LABELS[key]
        if "error" in r:
            rows.append([label, f"{budget / MB:g}", f"error: {r['error']}"] + ["—"] * 7)
            continue
        rows.append([label, f"{budget / MB:g}", common.num(r["total"] / MB), common.num(m.wall_s), common.num(m.cpu_s),
                     common.num(m.peak_rss_mb, 0), common.ratio(m.peak_rss_mb, base_rss), common.num(m.peak_pss_mb, 0),
                     common.num(m.peak_disk_mb, 0), common.num(m.final_disk_mb, 0)])
    return rows


def mixture_rows(results: dict) -> list[list[object]]:
    rows = []
    for (key, budget), r in results.items():
        if "error" in r:
            continue
        shares = realised(r)
        over = sum(abs(s - WEIGHTS[FINEWEB]) > WINDOW_TOLERANCE for s in r["windows"])
        rows.append([LABELS[key], f"{budget / MB:g}",
                     " / ".join(f"{r['documents'][s]:,}" for s in WEIGHTS),
                     " / ".join(f"{shares[s]:.4f}" for s in WEIGHTS),
                     f"{r['window_bytes'] / 1000:,.0f}", f"{min(r['windows']):.3f} to {max(r['windows']):.3f}",
                     f"{worst_window(r):.3f}", f"{over} of {len(r['windows'])}"])
    return rows


def source_rows(results: dict, layout: Layout) -> list[list[object]]:
    rows = []
    total = sum(layout.sizes.values())
    for (key, budget), r in results.items():
        if "error" in r:
            continue
        spread = []
        for subset in WEIGHTS:
            groups = r["drawn"][subset]
            files = {name for name, _ in groups}
            spread.append(f"{len(files)}/{len(layout.files[subset])} files, "
                          f"{len(groups)}/{layout.row_groups(subset)} row groups")
        rows.append([LABELS[key], f"{budget / MB:g}", *spread, common.num(r["read"] / MB),
                     f"{r['read'] / total:.0%}"])
    return rows


LABELS = {"ours": "(a) ours, smollm-corpus mix", "handmade": "(b) hand-made: load_dataset, buffer, shuffle"}


def targets(results: dict, budgets: list[int]) -> list[str]:
    lines = []
    ours = {b: results.get(("ours", b)) for b in budgets if ("ours", b) in results}
    for budget, r in ours.items():
        at = f"budget {budget / MB:g} MB"
        if "error" in r:
            lines.append(common.check(f"ours runs, {at}", False, r["error"]))
            continue
        rss = r["measured"].peak_rss_mb
        lines.append(common.check(f"ours peak RSS < 1 GB, {at}", rss < 1000, f"{rss:.0f} MB"))
        shares = realised(r)
        lines.append(common.check(
            f"ours realised shares within {SHARE_TOLERANCE:.0%} of the weights, {at}", share_ok(r),
            ", ".join(f"{s} {shares[s]:.4f} (weight {w})" for s, w in WEIGHTS.items())))
        worst = worst_window(r)
        lines.append(common.check(
            f"ours: every {WINDOW_SHARE:.0%} window holds {FINEWEB} within {WINDOW_TOLERANCE} of "
            f"{WEIGHTS[FINEWEB]}, {at}", worst <= WINDOW_TOLERANCE,
            f"worst {worst:.3f} over {len(r['windows'])} windows of {r['window_bytes'] / 1000:,.0f} kB"))
        mismatch = {s: (r["manifest_bytes"].get(s), r["bytes"][s]) for s in WEIGHTS
                    if r["manifest_bytes"].get(s) != r["bytes"][s]}
        lines.append(common.check(f"ours: manifest bytes per input = its lines in input.jsonl, {at}", not mismatch,
                                  "; ".join(f"{s}: manifest {a}, output {b}" for s, (a, b) in mismatch.items())
                                  or "equal"))
    if len(ours) > 1:
        small, large = ours[min(ours)], ours[max(ours)]
        if "error" in small or "error" in large:
            lines.append(common.check("ours peak RSS flat with the budget", None, "a run failed"))
        else:
            a, b = small["measured"].peak_rss_mb, large["measured"].peak_rss_mb
            lines.append(common.check(
                f"ours peak RSS flat with the budget (at most {FLAT_RSS}x)", b <= FLAT_RSS * a,
                f"{a:.0f} MB at {min(ours) / MB:g} MB, {b:.0f} MB at {max(ours) / MB:g} MB: {b / a:.2f}x"))
    for budget in budgets:
        r = results.get(("handmade", budget))
        if r and "error" not in r:
            shares = realised(r)
            lines.append(f"INFO  hand-made at budget {budget / MB:g} MB: peak RSS {r['measured'].peak_rss_mb:.0f} MB; "
                         f"shares {shares[FINEWEB]:.4f} / {shares['cosmopedia-v2']:.4f}; worst "
                         f"{WINDOW_SHARE:.0%} window {worst_window(r):.3f}")
        elif r:
            lines.append(f"INFO  hand-made at budget {budget / MB:g} MB failed: {r['error']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--size", type=float, default=200, help="MB of parquet in the mirror, both subsets together")
    parser.add_argument("--files", type=int, default=4, help="parquet files per subset")
    parser.add_argument("--budget-mb", type=float, default=20, help="the mixture's budget, MB of jsonl")
    parser.add_argument("--larger", type=float, default=4.0,
                        help="both run again at this many times the budget, for peak RSS; 0 to skip")
    parser.add_argument("--buffer", type=int, default=50_000, help="rows of the hand-made way's shuffle buffer")
    parser.add_argument("--seed", type=int, default=0, help="seed of both")
    parser.add_argument("--only", default="ours,handmade", help="comma-separated runs, from ours, handmade")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="data and runs live here")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= {"ours", "handmade"} or args.size <= 0 or args.files < 1 or args.budget_mb <= 0 \
            or args.larger < 0 or args.buffer < 1:
        parser.error("--only takes ours, handmade; --size, --files, --budget-mb and --buffer must be positive, "
                     "--larger at least 0")
    common.install_cleanup()
    work = args.work.resolve()
    print("building the data (once) ...", file=sys.stderr, flush=True)
    mirror = build(work, args.size, args.files)
    layout = Layout(mirror)
    budgets = list(dict.fromkeys([round(args.budget_mb * MB)] + ([round(args.budget_mb * args.larger * MB)]
                                                                   if args.larger else [])))

    results: dict[tuple[str, int], dict] = {}
    for budget in budgets:
        for key in ("ours", "handmade"):
            if key not in only:
                continue
            run = work / "runs" / f"mix-{key}-{budget}"
            shutil.rmtree(run, ignore_errors=True)
            out = run / "out"
            out.mkdir(parents=True)
            command = (ours_command(mirror, out, budget, args.seed) if key == "ours"
                       else handmade_command(mirror, out, budget, args.seed, args.buffer))
            print(f"{LABELS[key]}, budget {budget / MB:g} MB", file=sys.stderr, flush=True)
            results[(key, budget)] = measure(key, command, out, run, layout)
    report(args, layout, budgets, results)


def report(args, layout: Layout, budgets: list[int], results: dict) -> None:
    ref = {budget: r for (key, budget), r in results.items() if key == "ours"}
    weights = " ".join(f"{s}={w}" for s, w in WEIGHTS.items())
    print(f"# bench_mix: {weights} as jsonl, smollm-corpus mix vs the hand-made way\n")
    print(common.machine_summary())
    print(f"- text: {layout.text}; mirror: {layout.describe()}; row groups of {ROW_GROUP_ROWS:,} rows")
    print(f"- budgets: {', '.join(f'{b / MB:g} MB' for b in budgets)} of jsonl; seed {args.seed}; hand-made shuffle "
          f"buffer {args.buffer:,} rows; one run each, a fresh process tree with empty cache and temp dirs\n")

    print("## Time and memory\n")
    print(common.markdown_table(
        ["run", "budget MB", "output MB", "wall s", "CPU s", "peak RSS MB", "RSS vs ours", "peak PSS MB",
         "extra disk MB (peak)", "left on disk MB"], speed_rows(results, ref)))
    print("\nWhole runs, start-up included. CPU: user + sys of the whole tree. Peak RSS/PSS: summed over the tree. "
          "Extra disk: the run's HF cache and temp folders (the hand-made way's Arrow cache); output excluded.\n")

    print("## The mixture\n")
    print(common.markdown_table(
        ["run", "budget MB", "documents (fineweb / cosmopedia)", "share of bytes (fineweb / cosmopedia)",
         f"{WINDOW_SHARE:.0%} window kB", f"{FINEWEB} share per window", f"worst |share - {WEIGHTS[FINEWEB]}|",
         f"windows off by > {WINDOW_TOLERANCE}"], mixture_rows(results)))
    print(f"\nShares are measured on the output itself (a line with a prompt is cosmopedia-v2's). Windows: the "
          f"output cut into {round(1 / WINDOW_SHARE)} stretches of equal bytes; a line cut by a boundary counts "
          "pro rata.\n")

    print("## Where the documents come from, and what is read\n")
    print(common.markdown_table(
        ["run", "budget MB", f"{FINEWEB} drawn from", "cosmopedia-v2 drawn from", "source MB read",
         "of the source"], source_rows(results, layout)))
    print("\nDrawn from: distinct files and row groups holding the output's documents (ours: the manifest's "
          "row_groups; the hand-made way: the rows it took). Source read, from the parquet footers: ours, the "
          "compressed bytes of its drawn row groups (it also reads every file's footer, and may render a few row "
          "groups drawn ahead that it then drops); the hand-made way, every file, which load_dataset converts "
          "into its Arrow cache.\n")

    print("## Targets\n")
    print("\n".join(targets(results, budgets)))


if __name__ == "__main__":
    main()
