"""Atomic file writing: readers never see a half-written file, and a failed write leaves the old one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_text_atomic", "write_bytes_atomic", "writable_file", "writable_folder"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _nearest_existing(path: Path) -> Path:
    """``path`` itself, or the closest ancestor of it that exists (the folder a write would create under)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _refuse_unless_writable_folder(folder: Path, path: Path, name: str) -> None:
    if not folder.is_dir():
        raise ValueError(f"{name}={str(path)!r} cannot be created: {folder} is a file, not a folder; choose a path in "
                         f"a folder (or move that file away).")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={str(path)!r} cannot be written: the folder {folder} is not writable by this user; "
                         f"choose a folder you can write to (or change its permissions).")


def writable_file(path: str | os.PathLike | None, name: str, example: str = "file") -> Path | None:
    """``path`` as a ``Path`` once it is known that a file can be written there, before any work; None stays None.

    Refused: an existing folder, a path under a file, a folder this user cannot write (an existing file is replaced).
    """
    if path is None:
        return None
    path = Path(path)
    if not str(path) or path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a folder; it names the file to write, e.g. "
                         f"{str(path / example)!r}.")
    _refuse_unless_writable_folder(_nearest_existing(path.parent), path, name)
    return path


def writable_folder(path: str | os.PathLike, name: str) -> Path:
    """``path`` as a ``Path`` once it is known that a folder can be created or written there, before any work.

    Refused: an existing file, a path under a file, a folder this user cannot write.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a file; it names the folder to write into: choose another path "
                         f"(or move that file away).")
    _refuse_unless_writable_folder(_nearest_existing(path), path, name)
    return path
