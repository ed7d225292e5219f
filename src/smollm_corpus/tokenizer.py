"""Tokenizing: documents to token ids with a Hugging Face ``tokenizer.json``, for trainers that read token files.

A :class:`Tokenizer` carries the tokenizer's JSON text, not a built ``tokenizers.Tokenizer``:
it pickles in a few milliseconds to a worker process, and each process builds the fast
tokenizer once (cached by content) the first time it encodes. Text is always text: characters
that spell a special token, ``<|endoftext|>`` included, encode as ordinary text, so the
end-of-text id appears only where :meth:`Tokenizer.encode_documents` puts it, as tiktoken's
``encode_ordinary`` does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import SourceError, UsageError

#: SmolLM's own tokenizer: byte-level BPE, 49,152 ids
DEFAULT_TOKENIZER = "HuggingFaceTB/SmolLM2-135M"
#: short names for Hub tokenizers; "gpt2" gives the same ids as tiktoken's gpt2 ``encode_ordinary``
ALIASES = {"gpt2": "openai-community/gpt2"}
DEFAULT_EOT = "<|endoftext|>"
_FILE = "tokenizer.json"
_USE = "pass --tokenizer gpt2, a Hub model id, a tokenizer.json or a folder holding one"

#: characters encoded per call: tokenizers returns an Encoding of ~90 bytes a token (ids, offsets,
#: masks, token strings), so a chunk is encoded a slice at a time, each slice copied into the compact
#: array before the next; this bounds that overhead to ~25 MB per worker, whatever the chunk size
SLICE_CHARS = 1 << 20
#: fast tokenizers built in this process, by (sha256, eot id): one build per process, whatever
#: the number of unpickled copies of the same Tokenizer
_built: dict[tuple[str, int], Any] = {}
_build_lock = threading.Lock()


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer and its end-of-text token, as recorded in a run's identity."""

    name: str  # Hub model id (aliases resolved), or the local path as given
    sha256: str  # of the tokenizer.json bytes
    commit: str | None  # the Hub commit the file came from; None for a local file
    vocab_size: int  # largest id + 1, added tokens included
    eot_id: int
    dtype: np.dtype  # uint16 when every id fits, else uint32
    json_text: str = field(repr=False, compare=False)  # what each process builds the fast tokenizer from

    @property
    def identity(self) -> dict[str, Any]:
        """What a rerun must match to append to the same token files."""
        return {"tokenizer": self.name, "tokenizer_sha256": self.sha256, "tokenizer_commit": self.commit,
                "vocab_size": self.vocab_size, "eot_id": self.eot_id, "dtype": self.dtype.name}

    def encode_documents(
        self, texts: Sequence[str], eot: Literal["before", "after"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts``, concatenated, each document preceded or followed by ``eot_id``.

        ``"before"`` is llm.c's layout, ``"after"`` nanoGPT's. Nothing else is added (no BOS,
        no post-processor tokens). Safe to call from several threads at once; the encoding
        itself runs without the GIL, on every core unless TOKENIZERS_PARALLELISM is false (then
        on the calling thread alone: best when as many workers as cores each encode a chunk).

        Returns:
            ``(tokens, counts)``: the ids in :attr:`dtype`, and each document's number of tokens,
            its end-of-text token included (int64, ``counts.sum() == len(tokens)``).
        """
        if eot not in ("before", "after"):
            raise ValueError(f"eot must be 'before' or 'after', not {eot!r}")
        texts = texts if isinstance(texts, list) else list(texts)
        encoded = [self._encode_slice(texts[start:stop], eot) for start, stop in _slices(texts)]
        if len(encoded) == 1:
            return encoded[0]
        return np.concatenate([t for t, _ in encoded]), np.concatenate([c for _, c in encoded])

    def _encode_slice(self, texts: list[str], eot: str) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._fast().encode_batch_fast(texts, add_special_tokens=False)
        counts = np.fromiter((len(e) + 1 for e in encodings), np.int64, len(encodings))
        tokens = np.empty(int(counts.sum()), self.dtype)
        position = 1 if eot == "before" else 0
        for encoding, count in zip(encodings, counts.tolist()):
            tokens[position:position + count - 1] = encoding.ids
            position += count
        ends = np.cumsum(counts)
        tokens[ends - counts if eot == "before" else ends - 1] = self.eot_id
        return tokens, counts

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``, special tokens included."""
        return self._fast().decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def _fast(self):  # -> tokenizers.Tokenizer
        key = (self.sha256, self.eot_id)
        fast = _built.get(key)
        if fast is None:
            with _build_lock:
                fast = _built.get(key)
                if fast is None:
                    fast = _built[key] = _build(self.json_text)
        return fast


def _slices(texts: list[str]) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of ``texts`` of about SLICE_CHARS characters; one run if empty."""
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= SLICE_CHARS:
            yield start, i + 1
            start, size = i + 1, 0
    if start < len(texts) or not texts:
        yield start, len(texts)


def load_tokenizer(spec: str | None = None, eot: str | None = None) -> Tokenizer:
    """The tokenizer ``spec`` names, with ``eot`` (default ``<|endoftext|>``) as its end-of-text token.

    Args:
        spec: None for SmolLM's own tokenizer; ``gpt2``; a ``tokenizer.json`` or a folder holding
            one; or a Hub model id, whose ``tokenizer.json`` is downloaded through the Hugging Face
            cache (HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE apply).
        eot: the token that ends each document; it must be one of the tokenizer's added tokens.

    Raises:
        UsageError: ``spec`` is neither a local file or folder nor a Hub model id, the file is not
            a readable tokenizer.json, or ``eot`` is not one of its added tokens.
        SourceError: the Hub cannot be reached, or has no such model or no tokenizer.json in it.
    """
    given = spec or DEFAULT_TOKENIZER
    local = Path(given).expanduser()
    if local.exists():
        path = local / _FILE if local.is_dir() else local
        if not path.is_file():
            raise UsageError(f"tokenizer folder {given} holds no {_FILE}; {_USE}")
        name, commit = given, None
    elif given.startswith((".", "/", "~")) or given.endswith(".json"):
        raise UsageError(f"tokenizer file {given} does not exist; {_USE}")
    else:
        name = ALIASES.get(given, given)
        path, commit = _download(name, given)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the tokenizer file {path}: {e.strerror}; {_USE}") from None
    return _tokenizer(data, name, commit, eot or DEFAULT_EOT, given)


def _download(repo: str, given: str) -> tuple[Path, str | None]:
    """``tokenizer.json`` of the Hub model ``repo``, through the cache, and the commit it came from."""
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import validate_repo_id

    from .hub import hub_download

    try:
        validate_repo_id(repo)
    except hf.HFValidationError:
        raise UsageError(f"tokenizer {given!r} is not a file, a folder or a Hub model id; {_USE}") from None

    def download() -> str:
        try:
            return hf_hub_download(repo, _FILE)
        except hf.LocalEntryNotFoundError:
            raise  # a kind of EntryNotFoundError: hub_download tells it
        except hf.EntryNotFoundError:
            raise SourceError(
                f"the Hub model {repo} has no {_FILE} (only fast tokenizers can be used); "
                f"convert it with transformers' save_pretrained, or {_USE}"
            ) from None

    path = Path(hub_download(download, f"the tokenizer of {repo}",
                             missing=f"tokenizer {given!r} is not a local file or folder, and the Hub has no model "
                                     f"{repo} (or it is private: set HF_TOKEN); {_USE}",
                             local="pass a local tokenizer.json"))
    # the cache keeps each file under snapshots/<commit>/
    commit = path.parent.name
    return path, commit if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit) else None


def _tokenizer(data: bytes, name: str, commit: str | None, eot: str, given: str) -> Tokenizer:
    unreadable = f"{given} is not a readable {_FILE}"
    try:
        config = json.loads(data)
        added = {t["content"]: t for t in config.get("added_tokens") or []}
        fast = _build(data.decode())
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UsageError(f"{unreadable} ({e}); {_USE}") from None
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception for a bad file
        raise UsageError(f"{unreadable} ({type(e).__name__}: {e}); {_USE}") from None
    eot_id = fast.token_to_id(eot)
    specials = ", ".join(t for t, a in added.items() if a.get("special")) or "none"
    if eot_id is None:
        raise UsageError(f"the end-of-text token {eot!r} is not in the vocabulary of {name}; "
                         f"pass --eot naming one of its special tokens: {specials}")
    if eot not in added:
        raise UsageError(f"the end-of-text token {eot!r} of {name} is an ordinary token that text can produce; "
                         f"pass --eot naming one of its special tokens: {specials}")
    json_text = data.decode()
    if not added[eot].get("special"):
        # an added token that is not special is matched inside text; the document separator must not be
        added[eot]["special"] = True
        json_text = json.dumps(config, ensure_ascii=False)
        fast = _build(json_text)
    vocab_size = max(fast.get_vocab(with_added_tokens=True).values()) + 1
    tokenizer = Tokenizer(
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        commit=commit,
        vocab_size=vocab_size,
        eot_id=eot_id,
        dtype=np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32),
        json_text=json_text,
    )
    with _build_lock:
        _built.setdefault((tokenizer.sha256, eot_id), fast)
    return tokenizer


def _build(json_text: str):  # -> tokenizers.Tokenizer
    """A fast tokenizer that encodes exactly the text it is given, and nothing more."""
    from tokenizers import Tokenizer as FastTokenizer

    fast = FastTokenizer.from_str(json_text)
    fast.encode_special_tokens = True  # special tokens spelled out in a document are text
    fast.no_truncation()
    fast.no_padding()
    return fast
