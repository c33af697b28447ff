"""The one lock rule for every writer of a run folder (or of a report folder).

A writer (`gaal train`, a sweep launching a run, `gaal report --out`) holds an exclusive
`flock` on `<folder>/.lock` for as long as it writes there, and records itself in the file:
host, pid, since when and which command. A second writer is refused at once with that record,
so two trainings never interleave their epochs in one metrics.jsonl.

A killed holder leaves no stale lock: the kernel releases a flock when the last descriptor of
it closes, whatever killed the process, so the next writer simply takes it (the record left in
the file is then only history, rewritten by the new holder). The lock file stays in the folder:
removing it while another process waits on it would let two writers lock two different files.

The lock file is opened without following a link (`O_NOFOLLOW`) and without waiting
(`O_NONBLOCK`), then its type checked: a link planted at `.lock` is refused naming it (its target
is never truncated), and a FIFO there is no lock, never waited on.

A sweep locks a run before it starts its process and hands the locked descriptor down
(`GAAL_LOCK_FD`): the `gaal train` it launches adopts that lock instead of waiting for itself.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import os_error, own_folder, refuse_planted

LOCK = ".lock"
#: a lock record is one JSON line of a few hundred bytes
RECORD_MAX = 4096
_NO_WAIT = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: the environment variable through which a sweep hands a run's locked descriptor to its process
FD_ENV = "GAAL_LOCK_FD"


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a folder's lock, as its lock file records."""

    pid: int | None
    host: str = "?"
    since: str = "?"
    command: str = "?"

    def describe(self) -> str:
        return f"{self.command} (pid {self.pid} on {self.host}, since {self.since})"


def read_holder(folder: str | Path) -> Holder | None:
    """The record in `<folder>/.lock`; None when there is none or it cannot be read."""
    fd = _open_regular(Path(folder) / LOCK, os.O_RDONLY)
    if fd is None:
        return None
    try:
        text = os.read(fd, RECORD_MAX).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        record = json.loads(text)
    except json.JSONDecodeError:  # an older gaal wrote the pid alone
        return Holder(int(text)) if text.isdigit() else None
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    return Holder(
        pid if isinstance(pid, int) else None,
        str(record.get("host", "?")),
        str(record.get("since", "?")),
        str(record.get("command", "?")),
    )


def _open_regular(path: Path, flags: int) -> int | None:
    """A descriptor of the regular file `path` (no link followed, no FIFO waited on), or None."""
    try:
        fd = os.open(path, flags | _NO_WAIT)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def write_holder(fd: int, command: str, pid: int | None = None) -> None:
    """Record the holder of the lock held through `fd` (default: this process)."""
    record = {
        "host": socket.gethostname(),
        "pid": pid or os.getpid(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def try_lock(folder: str | Path, command: str) -> int | None:
    """Lock `folder` (created if needed) for `command`.

    Returns:
        The descriptor that holds the lock (close it to release), or None when another process
        holds it.

    Raises:
        GaalError: the folder or its lock file cannot be created, or a link or a special file
            (a FIFO) is there in its place.
    """
    folder = own_folder(folder)
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_WAIT, 0o644)
    except OSError as err:
        refuse_planted(path)  # a link (ELOOP) is named as one
        raise os_error(err, path, "cannot be created") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device: never a lock, never waited on
        os.close(fd)
        refuse_planted(path)
        raise GaalError("is not a regular file; expected gaal's lock file", source=str(path))
    os.set_blocking(fd, True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    write_holder(fd, command)
    return fd


def is_locked(folder: str | Path) -> bool:
    """Whether a live process (this one included) holds the folder's lock."""
    fd = _open_regular(Path(folder) / LOCK, os.O_RDONLY)
    if fd is None:  # none, or a link or a FIFO: no lock anyone holds
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def busy(folder: str | Path) -> GaalError:
    """The refusal of a second writer, naming the one that holds the folder."""
    holder = read_holder(folder)
    who = holder.describe() if holder else "another process"
    return GaalError(
        f"is being written by {who}; wait for it to finish or stop it, then run this again "
        "(a killed holder releases the folder at once)",
        source=str(folder),
    )


def _inherited(folder: Path) -> int | None:
    """The locked descriptor a sweep handed down for `folder`, if there is one and it is that folder's."""
    value = os.environ.get(FD_ENV, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        mine, theirs = os.fstat(fd), os.lstat(folder / LOCK)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: a no-op that proves it
    except OSError:
        return None
    return fd


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold `folder`'s lock for the block (adopting the one a sweep handed down). When the
    block fails, a lock file (and an empty folder) that this call created is removed again.

    Raises:
        GaalError: another process holds it (named), or the folder cannot be created.
    """
    folder = Path(folder)
    new_folder, new_file = not os.path.lexists(folder), not os.path.lexists(folder / LOCK)
    fd = _inherited(folder)
    owned = fd is None
    if fd is None:
        fd = try_lock(folder, command)
        if fd is None:
            raise busy(folder)
    else:
        write_holder(fd, command)
    try:
        yield
    except BaseException:
        # a command refused on bad input leaves the folder as it found it
        if owned and new_file:
            (folder / LOCK).unlink(missing_ok=True)
            if new_folder:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when nothing else was written
        raise
    finally:
        if owned:
            os.close(fd)
