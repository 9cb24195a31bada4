"""Where attachment bytes live: an interface an object store can implement, and the filesystem default.

The store is content-agnostic — it keeps whatever bytes it is given (ciphertext, from ``blobs.crypto``) under an
id, streamed in and out so a 20 MB photo is never held in memory whole. Ids are chosen by the caller (random,
never reused); ``put`` never overwrites an existing blob.

Filesystem layout: ``<root>/aa/bb/<blob_id>`` (``aa``/``bb`` the id's first two character pairs, to keep
directories small), written to a temporary file in the same directory, fsynced, then renamed into place, so a
reader or a crash never sees half a blob, and a failed or refused upload leaves nothing behind. Files are 0600,
directories 0700.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

READ_BYTES = 256 * 1024
_BLOB_ID = re.compile(r"^[A-Za-z0-9_-]{4,128}$")


class BlobNotFound(LookupError):
    """No blob has this id (never stored, deleted, or lost)."""


class BlobStore(Protocol):
    def put(self, blob_id: str, chunks: Iterable[bytes]) -> int:
        """Store the concatenated ``chunks`` under ``blob_id``; returns the size in bytes.

        All or nothing: if iterating ``chunks`` raises (a refused or interrupted upload), nothing is kept and
        the exception propagates. Raises ``FileExistsError`` if the id is taken.
        """
        ...

    def open(self, blob_id: str) -> Iterator[bytes]:
        """The blob's bytes, in pieces. Raises :class:`BlobNotFound` at once (not on first iteration)."""
        ...

    def delete(self, blob_id: str) -> None:
        """Remove the blob; removing a missing blob is not an error."""
        ...


class FilesystemBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, blob_id: str) -> Path:
        if not _BLOB_ID.match(blob_id):
            raise ValueError(f"{blob_id!r} is not a valid blob id")
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    def put(self, blob_id: str, chunks: Iterable[bytes]) -> int:
        final = self.path_of(blob_id)
        if final.exists():
            raise FileExistsError(f"blob {blob_id} already exists")
        folder = final.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = folder / f".{blob_id}.{secrets.token_hex(6)}.tmp"
        size = 0
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            _publish(temporary, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        _fsync_directory(folder)
        return size

    def open(self, blob_id: str) -> Iterator[bytes]:
        try:
            handle = self.path_of(blob_id).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {blob_id} does not exist") from None
        return _read(handle)

    def delete(self, blob_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(blob_id).unlink()


def _publish(temporary: Path, final: Path) -> None:
    """Move the finished file into place atomically, never replacing an existing blob."""
    try:
        # A hard link fails if ``final`` exists, where a rename would silently replace it.
        os.link(temporary, final)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: the existence check in put() has to do
        os.replace(temporary, final)
        return
    temporary.unlink()


def _read(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while piece := handle.read(READ_BYTES):
            yield piece


def _fsync_directory(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
