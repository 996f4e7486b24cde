"""Writing files so that a reader never sees half of one: a temporary file next to the target, then a rename."""

import os
from collections.abc import Callable
import secrets


def atomic_write(path: str | os.PathLike, write: Callable, binary: bool = True, durable: bool = False) -> None:
    """Call write(file) on a temporary file next to path, then rename it to path (creating the folder).

    The file gets the usual umask permissions (os.open with 0o666, not mkstemp's 0o600). durable: fsync
    before the rename (checkpoints), at the cost of a disk flush per file. Nothing is left behind on error."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path
