"""Atomic file and directory writes: a crash never leaves a half-written output behind.

Temporary entries beside an output carry the writer's PID (``.NAME.tmp-PID-xxxx``,
``.NAME.old-PID``), so the next run on the same output removes those of dead processes; an
output is locked (``.NAME.lock``, ``flock``) from its run's start until it is written.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distilprune.errors import UserError

_LOCKS: dict[Path, int] = {}  # output path -> fd of its held lock file
_CREATED: dict[Path, list[Path]] = {}  # output path -> parent dirs made for its lock
_EMPTY_ONCE: list[Path] = []  # dirs made for released locks, removed when they become empty


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _key(target: str | Path) -> Path:
    target = Path(target)
    return target.parent.resolve() / target.name


def _is_worker() -> bool:
    """A non-main process of a torchrun / accelerate launch run (the main process writes)."""
    return os.environ.get("RANK", "0") != "0"


def _make_parents(folder: Path) -> list[Path]:
    """Create the missing directories down to ``folder``; returns those this call created."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # another run made it meanwhile
            continue
        except OSError as exc:
            _remove_created(created)
            raise UserError(f"cannot create {path}: {exc.strerror}") from exc
        created.append(path)
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove the directories a run created for its output, deepest first, while they are empty."""
    for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()


def _flock(path: Path, target: str | Path, created: list[Path]) -> int:
    """An fd holding an exclusive ``flock`` on ``path`` (its PID written in it); ``created`` grows
    by the parent directories made for it (another run's cleanup may remove them meanwhile)."""
    for _ in range(10):
        created += _make_parents(path.parent)
        try:  # the holder may remove the file (or its new parent) between our open and flock: retry
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"another run (PID {holder}) is writing {target} right now "
                            f"(lock {path}); wait for it or choose another --out") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                return fd
        os.close(fd)
    raise UserError(f"cannot lock {target}: {path} keeps changing")


def lock_output(target: str | Path, label: str | Path | None = None) -> None:
    """Hold ``.NAME.lock`` beside ``target`` until :func:`unlock_output` (re-entrant per process).

    A second run on the same output fails now with one line (naming ``label``, default
    ``target``) instead of racing this one. Missing parent directories are created for the lock,
    and removed again at unlock while still empty (the run failed before writing anything there).
    """
    key = _key(target)
    if key in _LOCKS or _is_worker():
        return
    created: list[Path] = []
    try:
        _LOCKS[key] = _flock(_lock_path(key), label or target, created)
    except BaseException:
        _remove_created(created)
        raise
    _CREATED[key] = created


def unlock_output(target: str | Path) -> None:
    """Release and remove the lock :func:`lock_output` took on ``target`` (no-op when not held), and
    the parent directories it created if nothing was written in them."""
    key = _key(target)
    fd = _LOCKS.pop(key, None)
    if fd is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_lock_path(key))
        os.close(fd)
        _EMPTY_ONCE.extend(_CREATED.pop(key, []))
        _remove_created(_EMPTY_ONCE)  # also those that held another output's lock until now
        _EMPTY_ONCE[:] = [path for path in _EMPTY_ONCE if path.is_dir()]


@contextlib.contextmanager
def locked_dir(folder: str | Path) -> Iterator[None]:
    """Hold ``FOLDER/.run.lock`` for the block: a run writing several outputs under ``folder`` (a
    pipeline's stages, a study's grid), so a second one fails at once. ``folder`` is created if
    missing, and removed again when the run wrote nothing in it."""
    marker = Path(folder) / "run"
    held = _key(marker) in _LOCKS
    _probe_writable(marker, Path(folder))
    lock_output(marker, label=folder)
    try:
        yield
    finally:
        if not held:
            unlock_output(marker)


def unlock_all() -> None:
    """Release every output lock of this process (end of a CLI command, or exit)."""
    for key in list(_LOCKS):
        unlock_output(key)


atexit.register(unlock_all)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _drop_free_lock(path: Path) -> None:
    """Remove a lock file nobody holds (its run was killed); a held one stays."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)


def sweep_stale(target: str | Path) -> None:
    """Remove temporary entries and free lock files beside ``target`` left by dead processes
    (killed mid-save); a backup whose rename back never happened is restored when ``target`` is
    missing."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    if _key(target) not in _LOCKS:
        _drop_free_lock(_lock_path(target))
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old|probe)-(\d+)(-.*)?")
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if not match or _alive(int(match[2])):
            continue
        if match[1] == "old" and not target.exists():
            os.replace(entry, target)
        else:
            _remove(entry)


def discard(path: str | Path) -> None:
    """Remove a directory as one step: renamed to a temporary name first (a kill mid-way leaves an
    entry :func:`sweep_stale` removes, never a half-deleted ``path``)."""
    path = Path(path)
    if path.exists():
        trash = path.with_name(f".{path.name}.tmp-{os.getpid()}-discard")
        os.replace(path, trash)
        _remove(trash)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Give ``root`` and everything in it the user's umask: ``mkdtemp`` makes 0700 and some
    writers (safetensors) 0600 files."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        full = 0o777 if path.is_dir() or path.stat().st_mode & 0o111 else 0o666
        os.chmod(path, full & ~mask)


def _probe_writable(target: Path, label: Path) -> None:
    """Create and remove a temporary entry in ``target``'s nearest existing parent, as
    :func:`atomic_dir` / :func:`atomic_file` will: a one-line error when that cannot work."""
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {label}: {parent} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot create {label}: {parent} is not writable ({exc.strerror})") from exc


def _refuse_cwd(target: Path) -> None:
    """An output replaces its path: never the current directory or one holding it."""
    if target.name in ("", ".", "..") or Path.cwd().is_relative_to(target.resolve()):
        raise UserError(f"cannot write {target}: it is the current directory or holds it; "
                        "name a new file or directory")


def check_writable(target: str | Path) -> None:
    """Fail now, not after training, when ``target`` cannot be created (see :func:`_probe_writable`)
    or would replace the current directory. Then lock ``target`` for this run and sweep what dead
    runs left beside it."""
    target = Path(target)
    _refuse_cwd(target)
    _probe_writable(target, target)
    lock_output(target)
    sweep_stale(target)


def _commit(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; on any failure ``target`` is as before and ``tmp`` is gone."""
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    moved = False
    try:
        if target.exists():
            os.replace(target, backup)
            moved = True
        os.replace(tmp, target)
    except BaseException as exc:
        if moved:
            os.replace(backup, target)
        _remove(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    if moved:
        _remove(backup)


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; rename it onto ``target`` on success.

    On any exception the temporary directory is removed and ``target`` is left untouched. The
    result gets the user's umask (see :func:`_apply_umask`); ``target``'s lock is released after.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"output directory {target} already exists (pass --overwrite to replace it)")
    lock_output(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        try:
            yield tmp
            _apply_umask(tmp)
        except BaseException:
            _remove(tmp)
            raise
        _commit(tmp, target)
    finally:
        unlock_output(target)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``target``; rename it onto ``target`` when closed cleanly (with
    the user's umask, not ``mkstemp``'s 0600). A lock held on ``target`` is released after."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    finally:
        unlock_output(target)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def save_png(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Save a pyplot figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    plt.close(fig)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc


def stable_hash(payload: Any, length: int = 16) -> str:
    """A short, order-stable SHA-256 of any JSON-serialisable payload."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
