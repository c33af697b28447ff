"""Writing files: one helper for every file gaal writes, and the signal rule that keeps it clean.

`write_file` writes beside the target under a temporary name and renames it over the target,
so a reader sees the old file or the new one, never half of one. Any failure (a full disk, a
read-only folder, an exception of the code producing the bytes, SIGTERM or Ctrl-C) removes the
temporary file, and an OS error becomes a `GaalError` naming the path and the cause (exit code
2 at the command line) instead of a traceback. A path the caller names as protected (the
command's input, a run's own files) is never overwritten.

No write follows a link gaal did not create. Every file and folder gaal creates, renames or
removes (a run's files, locks, staging and restart folders, caches, outputs) is looked at with
`lstat` first, and a symbolic link or anything but a regular file (a folder, for a folder) at
that name is refused with a `GaalError` naming it (exit code 2): `write_file` renames over the
target (a rename never follows a link), `append_file` and the locks open with `O_NOFOLLOW`,
`own_folder` and `remove_tree` refuse a link where gaal keeps a folder of its own. Only the
folders above such a name (`results/`, the folder of `--out`) are the user's and followed.

SIGTERM is turned into the exception `Terminated` while a command runs (`sigterm_raises`), as
Python already does with SIGINT (KeyboardInterrupt): `finally` blocks run, so no temporary file
or half-built report is left by `kill PID`. SIGKILL cannot be caught; what it leaves behind is
a temporary name (`.<name>.<random>.tmp`) that no reader looks at.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from gaal_cli.foundation.errors import GaalError

#: what `write_file` accepts: the bytes or text, or a function writing them into a binary file
Content = bytes | str | Callable[[BinaryIO], object]
TERMINATED_EXIT = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived while a command ran (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` swallows it)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread; the old handler returns after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is over: a few renames that belong together finish together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def os_error(err: OSError, path: str | Path, doing: str = "cannot be written") -> GaalError:
    """An OS error as the user's error: the path and the cause (read-only, no space left, ...)."""
    cause = err.strerror or type(err).__name__
    return GaalError(f"{doing} ({cause})", source=str(path))


def make_folder(path: str | Path) -> Path:
    """Create a folder and its parents.

    Raises:
        GaalError: it cannot be created (a file in the way, read-only, no space).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise GaalError("is a file, expected a folder", source=str(path)) from None
    except OSError as err:
        raise os_error(err, path, "cannot be created") from None
    return path


def _kind(mode: int) -> str:
    kinds = {stat.S_ISLNK: "a symbolic link", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device"}
    kinds |= {stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise os_error(err, path, "cannot be looked at") from None


def refuse_planted(path: str | Path, *, folder: bool = False, field: str | None = None) -> bool:
    """Whether `path` exists, after refusing what gaal never makes there: a symbolic link, or
    anything but a regular file (a folder, with `folder`). Nothing is followed: `lstat` only.

    Raises:
        GaalError: names the path and what it is.
    """
    path = Path(path)
    info = _lstat(path)
    if info is None:
        return False
    wanted = stat.S_ISDIR if folder else stat.S_ISREG
    if not wanted(info.st_mode):
        expected = "a folder" if folder else "a regular file"
        raise GaalError(
            f"is {_kind(info.st_mode)} where gaal keeps {expected} of its own; gaal never writes, renames or "
            "removes through a link or onto a special file: remove it (or choose another path)",
            source=str(path),
            field=field,
        )
    return True


def own_folder(path: str | Path, field: str | None = None) -> Path:
    """Create a folder gaal writes into (its parents are the user's and may be links), refusing a
    symbolic link or a file at its own name.

    Raises:
        GaalError: a link or a non-folder there, or the folder cannot be created.
    """
    path = Path(path)
    if not refuse_planted(path, folder=True, field=field):
        make_folder(path)
        refuse_planted(path, folder=True, field=field)  # a link planted while it was made
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (after resolving links; a hard link counts as the same)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_protected(path: Path, protected: Iterable[str | Path], field: str | None = None) -> None:
    """Raises GaalError when `path` is one of `protected` (an input of the command, a run's own file)."""
    for other in protected:
        if same_file(path, other):
            raise GaalError(
                f"is an input of this command ({other}); it is never overwritten: write to another file",
                source=str(path),
                field=field,
            )


class _Recording:
    """A binary file that remembers the first OS error of a write: torch and others wrap it in
    their own exception (a full disk shows as torch's 'enforce fail at inline_container.cc')."""

    def __init__(self, fh: BinaryIO):
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):  # seek, tell, fileno, ... of the real file
        return getattr(self._fh, name)


def write_file(
    path: str | Path,
    content: Content,
    *,
    protected: Iterable[str | Path] = (),
    field: str | None = None,
    sync: bool = True,
) -> Path:
    """Write `content` to `path` through a temporary file in the same folder, then rename.

    Args:
        content: bytes, text (UTF-8), or a function that writes into the open binary file.
        protected: paths never to overwrite (the command's inputs, a run's own files).
        field: the option that named `path`, for the error message (e.g. --out).
        sync: fsync before the rename, so a crash of the machine cannot leave an empty file.

    Raises:
        GaalError: `path` is protected or a folder, or the OS refused (no space, read-only, ...);
            the temporary file is gone and `path` is untouched.
    """
    path = Path(path)
    refuse_protected(path, protected, field)
    if path.is_dir() and not path.is_symlink():
        raise GaalError("is a folder; expected the name of a file to write", source=str(path), field=field)
    refuse_planted(path, field=field)
    make_folder(path.parent)
    tmp = None
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(handle, "wb") as raw:
            fh = _Recording(raw)
            try:
                if callable(content):
                    content(fh)
                else:
                    fh.write(content.encode() if isinstance(content, str) else content)
                fh.flush()
                if sync:
                    os.fsync(raw.fileno())
            except Exception as err:
                if fh.error is not None and not isinstance(err, OSError):
                    raise fh.error from None  # the OS error the writer wrapped in its own
                raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a written file is not
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise os_error(err, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return path


@functools.cache
def _umask() -> int:
    """The process's umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_appending(path: str | Path, mode: str = "ab"):
    """A log file gaal keeps, opened to append (created if missing), never through a link
    (`O_NOFOLLOW`) nor onto a FIFO or a device (`O_NONBLOCK`, then the type checked).

    Args:
        mode: "ab" (bytes) or "a" (text), as `open`.

    Raises:
        GaalError: a link or a non-regular file there, or the OS refused.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        refuse_planted(path)  # ELOOP (a link) or ENXIO (a FIFO nobody reads): say which
        raise os_error(err, path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        refuse_planted(path)
        raise GaalError("is not a regular file; expected a log file", source=str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode)


def append_file(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """Append `data` to a log file gaal keeps (`open_appending`: no link followed, no FIFO).

    Raises:
        GaalError: a link or a non-regular file there, or the OS refused the write.
    """
    with open_appending(path) as fh:
        try:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        except OSError as err:
            raise os_error(err, path) from None


def remove_tree(path: str | Path) -> None:
    """Remove a folder gaal made (a staging or replaced folder); nothing when it is not there.

    Raises:
        GaalError: a link or a file at its name (gaal never made it: it is not removed, and
            nothing is written through it).
    """
    if refuse_planted(path, folder=True):
        shutil.rmtree(path, ignore_errors=True)
