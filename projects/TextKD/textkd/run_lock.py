"""One run per ``OUTPUT_DIR`` (framework-free).

:class:`OutputDirLock` writes ``OUTPUT_DIR/textkd_run.lock`` (JSON: pid, host, start time,
command) with an exclusive create. A second run finds the file and refuses at once
(:class:`OutputDirInUse`, naming the directory and the run that holds it) while that run's process
is alive; a lock left by a dead process on this host (a crash, a kill) is stale and taken over with
a warning. The lock is released when the run ends (also at interpreter exit). Only the main
process of a multi-process run takes it.

:func:`prepare_output_dir` creates ``OUTPUT_DIR`` and checks that it is writable, naming the key
and the path in words when not; :func:`remove_stale_tmp_files` removes the ``*.tmp`` files that a
run killed while saving leaves behind (called once the lock is held, so no live run owns them).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import json
import os
import socket
import sys
import time

__all__ = [
    "LOCK_NAME",
    "OutputDirError",
    "OutputDirInUse",
    "OutputDirLock",
    "prepare_output_dir",
    "remove_stale_tmp_files",
]

LOCK_NAME = "textkd_run.lock"

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a file of that name exists and is not a directory",
    errno.ENAMETOOLONG: "the path is too long",
}


class OutputDirError(OSError):
    """``OUTPUT_DIR`` cannot be created or written."""


class OutputDirInUse(RuntimeError):
    """Another live run holds the ``OUTPUT_DIR`` lock."""


def _unusable(path: str, key: str, e: OSError) -> OutputDirError:
    reason = _REASONS.get(e.errno, e.strerror or str(e))
    return OutputDirError(
        e.errno,
        f"{key}={path!r} cannot be used for checkpoints and logs: {reason} ({e}). Set {key} to "
        "a writable directory",
    )


def prepare_output_dir(path: str, key: str = "OUTPUT_DIR") -> str:
    """Create ``path`` (with parents) and check that a file can be written in it; returns the
    absolute path. :class:`OutputDirError` names ``key``, the path and the reason in words."""
    if not path:
        raise OutputDirError(errno.EINVAL, f"{key} is empty: set it to a writable directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(
            errno.ENOTDIR,
            f"{key}={path!r} is a file, not a directory: set {key} to a writable directory",
        )
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".textkd_write_test.{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise _unusable(path, key, e) from e
    return os.path.abspath(path)


def remove_stale_tmp_files(path: str) -> list[str]:
    """Remove the ``*.tmp`` files directly in ``path`` (partial checkpoints and tags of a run that
    died while saving; call with the lock held); returns the removed paths."""
    removed = []
    for tmp in sorted(glob.glob(os.path.join(glob.escape(path), "*.tmp"))):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # a zombie (exited, not yet reaped) holds nothing
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    return True


def _describe(info: dict) -> str:
    return (
        f"pid {info.get('pid')} on host {info.get('host')!r}, started "
        f"{info.get('start_time', '?')}, command: {info.get('command', '?')}"
    )


class OutputDirLock:
    """The lock of one run on ``directory`` (see the module docstring)."""

    def __init__(self, directory: str, command: str | None = None) -> None:
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command if command is not None else " ".join(sys.argv),
        }
        self.held = False

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                info = json.load(f)
            return info if isinstance(info, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written

    def _age(self) -> float:
        try:
            return time.time() - os.path.getmtime(self.path)
        except OSError:
            return 0.0

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise _unusable(self.directory, "OUTPUT_DIR", e) from e
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> list[str]:
        """Take the lock; returns warnings to log (a stale lock taken over). Raises
        :class:`OutputDirInUse` when a live run holds it."""
        warnings: list[str] = []
        for _ in range(5):
            if self._create():
                self.held = True
                atexit.register(self.release)
                return warnings
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            if not holder and self._age() < 5.0:
                time.sleep(0.5)  # being written by a run that is starting right now
                continue
            same_host = holder.get("host") == self.info["host"]
            pid = holder.get("pid")
            if holder and (not same_host or (isinstance(pid, int) and _pid_alive(pid))):
                where = (
                    ""
                    if same_host
                    else (" (on another machine: TextKD cannot check whether it still runs)")
                )
                raise OutputDirInUse(
                    f"OUTPUT_DIR {self.directory} is in use by another run{where}: "
                    f"{_describe(holder)}. Wait for that run to end, or give this run another "
                    f"OUTPUT_DIR; if that run is dead, delete {self.path}"
                )
            # stale: its process is gone (or the file is unreadable); move it aside atomically
            # so that of several runs taking over at once only one succeeds
            aside = f"{self.path}.stale.{os.getpid()}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            with contextlib.suppress(OSError):
                os.remove(aside)
            warnings.append(
                f"took over the stale lock of OUTPUT_DIR {self.directory}: its run "
                f"({_describe(holder) if holder else 'unreadable lock file'}) is no longer "
                "running"
            )
        raise OutputDirInUse(
            f"could not take the lock {self.path}: other runs keep taking it; give this run "
            "another OUTPUT_DIR"
        )

    def release(self) -> None:
        """Remove the lock file if this process holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder and holder.get("pid") == self.info["pid"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)
        with contextlib.suppress(Exception):
            atexit.unregister(self.release)
