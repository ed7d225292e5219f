"""The Hub's failures: which are worth retrying, and a message for each that names its cause and remedy."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import SmollmCorpusError, SourceError

#: attempts and first delay for transient Hub errors (429, 5xx, connection drops)
RETRY_ATTEMPTS = 5
RETRY_BASE_SECONDS = 1.0
T = TypeVar("T")


def with_retries(call: Callable[[], T], what: str) -> T:
    """Run ``call``, retrying transient Hub errors with exponential backoff and jitter."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call()
        except SmollmCorpusError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below, re-raised as SourceError
            transient, message = describe_hub_error(e, what)
            if not transient or attempt == RETRY_ATTEMPTS - 1:
                raise SourceError(message) from e
            time.sleep(RETRY_BASE_SECONDS * 2**attempt * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")


def hub_download(call: Callable[[], T], what: str, missing: str, local: str) -> T:
    """Run the Hub download ``call`` with retries, its two most common failures told in the caller's words.

    ``missing``: the whole message for a repository the Hub does not have; ``local``: what local copy
    can be given instead, for a file that is not cached while the Hub cannot be reached.

    Raises:
        SourceError: the download failed (after retries, where worth retrying).
    """
    from huggingface_hub import errors as hf

    def attempt() -> T:
        try:
            return call()
        except hf.GatedRepoError:
            raise  # describe_hub_error says how to get access
        except hf.RepositoryNotFoundError:
            raise SourceError(missing) from None
        except hf.LocalEntryNotFoundError:
            raise SourceError(
                f"{what} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set, or the "
                f"network is down); unset HF_HUB_OFFLINE, check the network or HF_ENDPOINT, or {local}"
            ) from None

    return with_retries(attempt, what)


def describe_hub_error(e: Exception, what: str) -> tuple[bool, str]:
    """Whether ``e`` is worth retrying, and a message naming its cause and remedy."""
    from huggingface_hub import errors as hf

    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # older datasets
        DatasetNotFoundError = ()  # type: ignore[assignment]  # noqa: N806

    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, hf.GatedRepoError) or (isinstance(e, DatasetNotFoundError) and "gated" in str(e).lower()):
        return False, (
            f"{what} is gated: accept its terms on the Hub, then set HF_TOKEN to a token of that account "
            "(or run `hf auth login`)"
        )
    if isinstance(e, hf.RevisionNotFoundError):
        return False, f"{what}: revision not found; check --revision (a branch, tag or commit of the repository)"
    if isinstance(e, (hf.RepositoryNotFoundError, DatasetNotFoundError)):
        return False, (
            f"{what} was not found, or needs authentication: check --source, and set HF_TOKEN if it is private"
        )
    if isinstance(e, hf.LocalEntryNotFoundError) or "offline" in str(e).lower():
        return False, (
            f"{what} is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set, or "
            "the network is down); unset HF_HUB_OFFLINE, check the network or HF_ENDPOINT, or use --source DIR"
        )
    # the remote miss is its own class in newer huggingface_hub, a subclass of EntryNotFoundError in older
    if isinstance(e, (hf.EntryNotFoundError, getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError))):
        return False, f"{what} is not in the repository: check --source and --revision"
    if status == 429:
        return True, f"the Hub is rate-limiting requests for {what} (HTTP 429); wait a few minutes and rerun"
    if status in (401, 403):
        return False, f"the Hub refused access to {what} (HTTP {status}); set HF_TOKEN to a valid token"
    if status is not None and status >= 500:
        return True, f"the Hub answered HTTP {status} for {what}; it may be down: retry later"
    if isinstance(e, (ConnectionError, TimeoutError, OSError)) or "connect" in type(e).__name__.lower() or "timeout" in type(e).__name__.lower():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return True, (
            f"cannot reach the Hub at {endpoint} for {what} ({e}); check the network, proxy and HF_ENDPOINT, "
            "then rerun the same command to resume"
        )
    return False, f"reading {what} failed: {type(e).__name__}: {e}"
