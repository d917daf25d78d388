"""Atomic writes: write to a temp file (or folder) beside the target, then rename.

Readers never see a partial file, and a crash or full disk leaves the old file intact.
``atomic_path`` is for one file, ``atomic_dir`` for a folder filled by several writers
(a converted checkpoint); both remove their temp on error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success rename it over ``path``.

    The temp file gets ordinary permissions (0666 less the umask), and is removed on error.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield an empty temp folder in the target's directory; on success it becomes ``path``.

    A folder cannot be renamed over a non-empty one, so an existing ``path`` is renamed
    aside first and deleted once the new folder is in place: ``path`` is briefly missing,
    never partial. The temp folder gets ordinary permissions (0777 less the umask); on
    error it is removed with everything in it, and the old ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.lexists(target):
            old = tmp.with_name(tmp.name + ".old")  # unique, since tmp is
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)
                raise
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)  # never hide the error that got us here


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` atomically and return the target path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
