"""A content-addressed blob store on the local filesystem.

A blob lives at ``<root>/sha256/<ab>/<cdef…>``, named by the sha256 of its bytes, so
the same content uploaded twice is stored once. Writes go to a temporary file in the
same directory and are renamed into place, so a reader never sees half a blob and a
crash leaves at most a stray temporary file. Reads re-hash every byte.

Storing content that is already there touches the file instead, and ``delete`` leaves
alone a file touched within its grace period: a retention job that finds a blob
unreferenced cannot delete it under an upload whose version is about to commit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from modeltrail.errors import IntegrityError, NotFound

CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_of(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise IntegrityError(f"blob digest {digest!r} is not a lowercase sha256 hex digest")
        return self.root / "sha256" / digest[:2] / digest[2:]

    def put_bytes(self, content: bytes) -> tuple[str, int]:
        """Stores bytes; returns (sha256 hex, size)."""
        digest = hashlib.sha256(content).hexdigest()
        target = self.path_of(digest)
        if not _touch(target):
            self._install(target, lambda out: out.write(content))
        return digest, len(content)

    def put_file(self, source: str | os.PathLike[str]) -> tuple[str, int]:
        """Stores a file's content, hashing while copying (one read of the source)."""
        hasher = hashlib.sha256()
        size = 0
        self.root.joinpath("tmp").mkdir(parents=True, exist_ok=True)
        with (
            open(source, "rb") as src,
            tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as tmp,
        ):
            for chunk in iter(lambda: src.read(CHUNK), b""):
                hasher.update(chunk)
                tmp.write(chunk)
                size += len(chunk)
        digest = hasher.hexdigest()
        target = self.path_of(digest)
        if _touch(target):
            os.unlink(tmp.name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp.name, target)
        return digest, size

    def has(self, digest: str) -> bool:
        return self.path_of(digest).exists()

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.path_of(digest).open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store at {self.root}") from None

    def copy_verified(self, digest: str, size: int, dest: Path) -> None:
        """Copies a blob to ``dest`` (atomically), checking its size and sha256."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        written = 0
        with (
            self.open(digest) as src,
            tempfile.NamedTemporaryFile(
                dir=dest.parent, prefix=f".{dest.name}.", delete=False
            ) as tmp,
        ):
            for chunk in _chunks(src):
                hasher.update(chunk)
                tmp.write(chunk)
                written += len(chunk)
        if hasher.hexdigest() != digest or written != size:
            os.unlink(tmp.name)
            raise IntegrityError(
                f"blob {digest} for {dest.name!r} is corrupt: its {written} bytes hash to "
                f"{hasher.hexdigest()} (expected {size} bytes with that digest)"
            )
        os.replace(tmp.name, dest)

    def delete(self, digest: str, *, unused_for_s: float = 0.0) -> bool:
        """Deletes a blob unless it was stored or reused in the last ``unused_for_s``
        seconds; returns whether it went."""
        path = self.path_of(digest)
        try:
            if unused_for_s and time.time() - path.stat().st_mtime < unused_for_s:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _install(self, target: Path, write: Callable[[IO[bytes]], object]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            write(tmp)
        os.replace(tmp.name, target)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: stream.read(CHUNK), b"")


def _touch(path: Path) -> bool:
    """Marks an existing blob as just used; False when there is none."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True
