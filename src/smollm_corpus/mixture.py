"""mix(): one shuffled, interleaved, budgeted training set from several datasets (the SmolLM mixture).

Two passes, each resumable after ``kill -9``:

1. *sample* (:mod:`sample`): each input is fetched as usual (template, filters, python-edu's
   contents, decontamination, tokens), but only the row groups of a seeded draw, in the drawn
   order, until they hold the input's share of the budget.
2. with ``dedup``, near-duplicates among every input's drawn documents are found (:mod:`clusters`),
   and an input they leave short of its share draws more.
3. *interleave* (:mod:`interleave`): documents are taken one at a time from the input furthest
   behind its share, from a few drawn row groups at once, in a random order.

Every choice comes from generators seeded by ``seed`` and the input's place in the command, and
their state is saved at each checkpoint: the output depends only on the command and its seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import clusters, formats
from .errors import OutputError, UsageError, writing
from .interleave import Input, Interleaver
from .manifest import Manifest
from .output import Output
from .sample import Sample
from .stats import Stats
from .subsets import MIX_PRESETS as PRESETS

log = logging.getLogger("smollm_corpus")

#: inputs of a mix, at most (a document's id holds its input's place in 8 bits)
MAX_INPUTS = 255
#: fetch options that do not change the output, left out of the mix's identity
_NOT_IDENTITY = {"num_proc", "dask", "dask_wait", "workers", "s3_client", "s3_endpoint_url", "region", "no_sign_request",
                 "source_repo", "revision", "where", "decontaminate"}


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, in whole units that add up to ``total`` (largest remainders)."""
    exact = [total * w / sum(weights) for w in weights]
    whole = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (whole[i] - exact[i], i))[: total - sum(whole)]:
        whole[i] += 1
    return whole


def parse_inputs(given: Sequence[str], preset: str | None) -> list[tuple[str, float]]:
    """``NAME=WEIGHT`` arguments (or a preset) as (name, weight) pairs, in order."""
    if preset is not None:
        if given:
            raise UsageError("give either --preset or NAME=WEIGHT inputs, not both")
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        return list(PRESETS[preset].items())
    inputs = []
    for arg in given:
        name, sep, weight = arg.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name or not value > 0:
            raise UsageError(f"{arg!r}: write each input as NAME=WEIGHT with a weight above 0, as in cosmopedia-v2=0.15")
        inputs.append((name, value))
    if not inputs:
        raise UsageError("name the inputs as NAME=WEIGHT (for example fineweb-edu-dedup=0.7 cosmopedia-v2=0.3), "
                         "or give --preset smollm")
    if len({n for n, _ in inputs}) != len(inputs):
        raise UsageError("an input is named twice; give each dataset once, with its whole weight")
    return inputs


@dataclass
class MixResult:
    output: Path
    manifest: Path
    stats: Stats
    already_complete: bool
    seconds: float
    inputs: list[dict]  # per input: name, weight, intended and realised share, documents, bytes, tokens, where from
    token_bytes: int | None = None

    @property
    def tokens(self) -> int | None:
        return None if self.token_bytes is None else self.stats.bytes // self.token_bytes


def mix(
    inputs: Sequence[tuple[str, float]] | Mapping[str, float],
    out_dir: str | os.PathLike,
    *,
    tokens: int | None = None,
    bytes: int | None = None,  # noqa: A002 - the option's name
    documents: int | None = None,
    seed: int = 0,
    allow_repeat: bool = False,
    format: str = "txt",  # noqa: A002
    template: str | None = None,
    separator: str | None = None,
    tokenizer: str | None = None,
    eot: str | None = None,
    val_tokens: int | None = None,
    shard_tokens: int | None = None,
    overwrite: bool = False,
    progress: Callable | None = None,
    **fetch_options,
) -> MixResult:
    """Write one shuffled, interleaved mixture of ``inputs`` (name -> weight) into ``out_dir``.

    Args:
        inputs: names ``fetch`` accepts, each with a weight (normalised).
        out_dir: the mixture's folder: ``input.txt`` / ``input.jsonl``, or token files, and ``manifest.json``.
        tokens, bytes, documents: the budget (one of them): each input gets its weight of it, within a document.
        seed: every draw and every choice of order comes from it.
        allow_repeat: an input too small for its share is drawn again (in a new order) rather than refused.
        format, template, separator, tokenizer, eot, val_tokens, shard_tokens: as for :func:`fetch`.
        fetch_options: the rest of :func:`fetch`'s options, applied to every input (source, filters, ...).

    Raises:
        UsageError: bad inputs or budget, or an input too small for its share without ``allow_repeat``.
    """
    from .pipeline import Progress, fetch

    started = time.monotonic()
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else [tuple(p) for p in inputs]
    given = [(k, v) for k, v in (("tokens", tokens), ("bytes", bytes), ("documents", documents)) if v is not None]
    if len(given) != 1:
        raise UsageError("give one budget: --tokens N, --bytes N or --documents N")
    kind, total = given[0]
    if total <= 0:
        raise UsageError(f"--{kind} must be more than 0")
    token_out = formats.token_output(format, tokenizer, eot, val_tokens, shard_tokens, None)
    if kind == "tokens" and token_out is None:
        raise UsageError("--tokens counts the tokens of a token format: add --format bin or nanogpt (or use --bytes)")
    if kind == "bytes" and token_out is not None:
        raise UsageError(f"--bytes counts text; with --format {format} give --tokens")
    for forbidden in ("limit", "max_bytes", "max_tokens"):
        if fetch_options.get(forbidden):
            raise UsageError(f"--{forbidden.replace('_', '-')} does not apply to mix: the budget decides what is taken")
    dedup = bool(fetch_options.get("dedup"))
    if dedup and allow_repeat:
        raise UsageError("--allow-repeat draws documents again, which --dedup would remove: give one of them")
    fetch_options = {k: v for k, v in fetch_options.items() if k not in ("limit", "max_bytes", "max_tokens", "dedup")}
    budgets = shares(total, [w for _, w in pairs])
    names = [n for n, _ in pairs]
    if len(pairs) > MAX_INPUTS:
        raise UsageError(f"a mix takes at most {MAX_INPUTS} inputs")
    empty = [n for n, b in zip(names, budgets) if b == 0]
    if empty:
        raise UsageError(f"{', '.join(empty)} would get nothing of a budget of {total:,} {kind}: raise the budget "
                         "or its weight")
    folder = Path(out_dir)
    options = {
        "subset": "mix", "format": format, "template": template, "separator": separator,
        "source": fetch_options.get("source_repo"), "revision": fetch_options.get("revision"),
        "where": list(fetch_options.get("where") or ()) or None,
        "decontaminate": bool(fetch_options.get("decontaminate")) or None,
        "mix": {"inputs": [[n, w] for n, w in pairs], "budget": [kind, total], "seed": seed, "allow_repeat": allow_repeat,
                "dedup": dedup, **{k: v for k, v in sorted(fetch_options.items())
                                   if k not in _NOT_IDENTITY and v is not None and v is not False}},
        **(token_out.identity if token_out else {}),
    }
    jsonl = format == "jsonl"
    output = folder if token_out else folder / ("input.jsonl" if jsonl else "input.txt")
    manifest_path = folder / "manifest.json"
    partial = output.with_name(output.name + ".incomplete")
    previous = None if overwrite else Manifest.load(manifest_path)
    if previous is not None:
        changed = previous.differences(options)
        if changed:
            raise OutputError(f"{folder} holds a mix made with other options (differing: {', '.join(changed)}); "
                              "add --overwrite to replace it, or choose another --out-dir")
        if previous.complete:
            shutil.rmtree(folder / ".mix", ignore_errors=True)  # a run stopped between its last two steps
            return MixResult(output, manifest_path, previous.stats, True, time.monotonic() - started,
                             json.loads(manifest_path.read_text()).get("inputs", []),
                             token_out.itemsize if token_out else None)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    manifest = previous
    if manifest is None:  # recorded at once: a rerun with other options is refused from the start
        _clear(folder, manifest_path, token_out)
        manifest = Manifest(options)
        manifest.position = {}
        with writing(manifest_path):
            manifest.save(manifest_path)
    key = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]
    work = folder / ".mix"
    for other in (work.iterdir() if work.exists() else ()):
        if other.name != key or overwrite:  # the samples of a mix with other options: never used again
            shutil.rmtree(other, ignore_errors=True)
    work = work / key
    samples = [Sample(n, i, seed, kind, b, allow_repeat, dedup) for i, (n, b) in enumerate(zip(names, budgets))]

    where = fetch_options.pop("where", None) or ()

    def draw(name: str, sample: Sample) -> None:
        fetch(name, work, format=format, template=template, separator=separator, tokenizer=tokenizer, eot=eot,
              val_tokens=val_tokens, shard_tokens=shard_tokens, progress=progress, sample=sample,
              where=filters_for(name, where, names), **fetch_options)

    for name, sample in zip(names, samples):
        draw(name, sample)
    duplicates = None
    if dedup:
        duplicates = _deduplicate(samples, work / "clusters", draw)
        _write_duplicates(folder / "duplicates.jsonl", samples, duplicates)
    streams = []
    for sample, budget in zip(samples, budgets):
        chunks, groups, part_separator = sample.drawn()
        streams.append(Input(sample, chunks, budget, len(part_separator)))
        sample.row_groups = groups
    sep = _separator(format, template, separator, names)
    itemsize = token_out.itemsize if token_out else 1
    validation = None
    if token_out:  # validation: the first whole documents of the mix holding val_tokens, by default 1% of the budget
        if token_out.val_tokens is not None:
            validation = ("tokens", token_out.val_tokens)
        elif kind == "tokens":
            validation = ("tokens", min(formats.DEFAULT_VAL_TOKENS, total // 100))
        else:
            validation = ("documents", max(1, total // 100))
        from . import shards

        out = shards.TokenFiles(folder, token_out.layout("mix"), manifest, manifest_path, token_out.tokenizer.vocab_size)
    else:
        out = Output(partial, manifest, manifest_path)
    view = Progress("mix (interleaving)", None)
    try:
        Interleaver(streams, out, manifest, sep, kind, itemsize, validation, seed, duplicates).run(progress, view)
        summary = _summary(streams, pairs, kind, itemsize)
        manifest.details = {"inputs": summary}
        if token_out:
            out.finish(token_out.meta)
        else:
            out.finish(output)
    except KeyboardInterrupt:
        out.checkpoint(wait=True)
        out.close()
        from .run import Interrupted

        raise Interrupted(f"interrupted: {manifest.stats.documents:,} documents of the mix are safely written; "
                          "run the same command again to resume") from None
    except BaseException:
        out.close()
        raise
    shutil.rmtree(folder / ".mix", ignore_errors=True)
    return MixResult(output, manifest_path, manifest.stats, False, time.monotonic() - started, summary,
                     token_out.itemsize if token_out else None)


#: rounds of drawing more for the documents near-duplicates took away, at most
DEDUP_ROUNDS = 8


def filters_for(name: str, where: Sequence[str], names: Sequence[str]) -> list[str]:
    """The ``--where`` expressions of one input: those without a prefix, and those given as ``NAME: EXPR``."""
    chosen = []
    for expression in where:
        scope = next((n for n in names if expression.startswith(n + ":")), None)  # hf:OWNER/NAME holds a colon too
        if scope is None:
            chosen.append(expression)
        elif scope == name:
            chosen.append(expression[len(scope) + 1:].strip())
    return chosen


def _deduplicate(samples: list[Sample], folder: Path, draw: Callable[[str, Sample], None]) -> np.ndarray:
    """The near-duplicates among every input's drawn documents (the first in input, then draw, order is kept).

    An input whose drawn documents no longer fill its share without them draws more, and the
    clusters are found again, until each share is filled (or after DEDUP_ROUNDS rounds).
    """
    for _ in range(DEDUP_ROUNDS):
        duplicates = clusters.Clusters([s.store for s in samples], folder).run()
        short = []
        for i, sample in enumerate(samples):
            keys, _, separator = sample.drawn()
            usable, largest = 0, 0
            for ordinal, key in enumerate(keys):
                amount, most = sample.amount(sample.store.load(key)[1], len(separator),
                                             clusters.removed_rows(duplicates, i, ordinal))
                usable, largest = usable + amount, max(largest, most)
            if usable < sample.budget + largest:
                sample.extra += sample.budget + largest - usable
                short.append(sample)
        if not short:
            return duplicates
        shutil.rmtree(folder, ignore_errors=True)  # before drawing more: these clusters are out of date
        for sample in short:
            draw(sample.name, sample)
    log.warning("near-duplicates still leave some inputs short of their share after %d rounds of drawing more",
                DEDUP_ROUNDS)
    return clusters.Clusters([s.store for s in samples], folder).run()


def _write_duplicates(path: Path, samples: list[Sample], duplicates: np.ndarray) -> None:
    """Each near-duplicate among the drawn documents, the one it duplicates, and their similarity."""
    keys = [s.drawn()[0] for s in samples]

    def where(doc: int) -> dict:
        i, ordinal, row = (int(x[0]) for x in clusters.split_id(np.array([doc], np.uint64)))
        chunk, _ = samples[i].store.load(keys[i][ordinal])
        return {"dataset": samples[i].name, "file": chunk.file.name, "file_row": chunk.start + row}

    tmp = path.with_name(path.name + ".tmp")
    with writing(path), open(tmp, "w") as f:
        for removed, kept, similarity in zip(duplicates["removed"].tolist(), duplicates["kept"].tolist(),
                                             duplicates["similarity"].tolist()):
            f.write(json.dumps({**where(removed), "duplicate_of": where(kept), "similarity": round(similarity, 3)}) + "\n")
    os.replace(tmp, path)


def _separator(format: str, template: str | None, separator: str | None, names: list[str]) -> bytes:
    if format != "txt":
        return b""
    from . import template as templates
    from .subsets import get_subset

    if separator is not None:
        return templates.unescape(separator).encode()
    seps = {get_subset(n).presets.get(template or "text").separator if get_subset(n).presets.get(template or "text")
            else "\n\n" for n in names}
    return (seps.pop() if len(seps) == 1 else "\n\n").encode()


def _summary(streams: list[Input], pairs, kind: str, itemsize: int) -> list[dict]:
    weights = sum(w for _, w in pairs)
    total_used = sum(s.used for s in streams) or 1
    out = []
    for stream, (name, weight) in zip(streams, pairs):
        store = stream.sample.store
        drawn = [[c.file.name, c.start, c.stop] for c, _ in map(store.load, stream.chunks)]
        out.append({
            "name": name, "weight": weight, "intended_share": weight / weights, "realised_share": stream.used / total_used,
            "budget": stream.budget, kind: stream.used, "documents": stream.documents, "bytes": stream.bytes,
            **({"tokens": stream.bytes // itemsize} if kind == "tokens" else {}),
            "passed_over": stream.passed, "duplicates": stream.duplicates,
            "draws": 1 + (int(stream.chunks[-1]) // stream.sample.row_groups if stream.chunks else 0),
            "row_groups": drawn,
        })
    return out


def _clear(folder: Path, manifest_path: Path, token_out) -> None:
    from .pipeline import _clear as clear

    clear(folder, manifest_path, token_out.layout("mix") if token_out else None, "mix")
