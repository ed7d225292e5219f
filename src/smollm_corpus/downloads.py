"""Source files brought to this machine's disk a few ahead of need, and deleted once read."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import unquote

from .hub import with_retries
from .signals import block_in_this_thread
from .source import HF_URL, SourceFile, local_copy


def acquire(file: SourceFile, staging: Path) -> Path:
    """A local path to ``file``.

    A file already in the Hugging Face cache is read from there and left in place; any
    other is downloaded into ``staging``, and :func:`release` deletes it once it has been
    read, which keeps disk use to the files in progress.
    """
    local = local_copy(file.location)
    if local is not None:
        return Path(local)
    from huggingface_hub import hf_hub_download

    match = HF_URL.match(file.location)
    assert match is not None
    repo, revision, path = match.group("repo"), unquote(match.group("revision")), match.group("path")
    download = lambda: hf_hub_download(repo, path, repo_type="dataset", revision=revision, local_dir=staging)  # noqa: E731
    return Path(with_retries(download, file.name))


def release(file: SourceFile, staging: Path) -> None:
    """Delete the copy of ``file`` that :func:`acquire` downloaded into ``staging``, if any."""
    with contextlib.suppress(FileNotFoundError):
        (staging / file.name).unlink()


class Downloads:
    """Brings source files to local disk ahead of need, ``ahead`` at a time, in threads.

    Downloading is waiting on the network, so it happens here, in the main process, while the
    worker processes render the files already on disk.
    """

    def __init__(self, staging: Path, ahead: int) -> None:
        self.staging = staging
        self._slots = threading.Semaphore(ahead)
        self._files: dict[SourceFile, Future] = {}

    def start(self, files: Iterable[SourceFile]) -> None:
        for file in files:
            if file not in self._files:
                self._files[file] = future = Future()
                # A daemon thread: a run that stops does not wait for downloads it no longer needs
                # (an interrupted download resumes from its .incomplete file next time).
                threading.Thread(target=self._download, args=(file, future), daemon=True,
                                 name=f"download-{file.index}").start()

    def _download(self, file: SourceFile, future: Future) -> None:
        block_in_this_thread()
        with self._slots:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(acquire(file, self.staging))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the file
                future.set_exception(e)

    def get(self, file: SourceFile) -> Path:
        """The local path of ``file``, once it is there."""
        self.start([file])
        return self._files[file].result()

    def release(self, file: SourceFile) -> None:
        self._files.pop(file, None)
        release(file, self.staging)

    def close(self) -> None:
        for future in list(self._files.values()):
            future.cancel()


class Remote:
    """Leaves the source files where they are, for workers elsewhere (a Dask cluster) to bring themselves.

    The same interface as :class:`Downloads`; a file's "path" is its location, whose footer
    :func:`read_metadata` reads with a few range requests.
    """

    def start(self, files: Iterable[SourceFile]) -> None:
        pass

    def get(self, file: SourceFile) -> str:
        return file.location

    def release(self, file: SourceFile) -> None:
        pass

    def close(self) -> None:
        pass
