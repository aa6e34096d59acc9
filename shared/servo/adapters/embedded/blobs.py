"""Object storage as plain files, with generation numbers for compare-and-set.

Object ``a/b.txt`` is the file ``<root>/a/b.txt``, so outputs and logs can be opened with any
tool. Bookkeeping lives in ``<root>/.blobmeta`` (a name no object path may start with):

* ``gen/<path>`` holds the object's generation as decimal text;
* ``tmp/`` holds files being written, which are renamed into place once complete;
* ``lock`` is locked with ``flock``: exclusively by writers while they check and change an
  object, shared by readers while they pair an object's bytes with its generation. ``flock``
  locks belong to an open file, so they exclude other threads of the same process as well as
  other processes.

Data is written to a temporary file before the lock is taken, so large objects do not hold it
up. Generations are microseconds since the epoch, bumped past the previous generation when
needed, so they change on every write and keep growing even across a delete.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servo.core.errors import AlreadyExists, Conflict, NotFound, ServoError

META_DIR = ".blobmeta"


class FileBlobs:
    """A :class:`~servo.ports.Blobs` store of files under ``root``.

    ``fsync`` (default on) flushes an object's bytes before it replaces the old version, so
    that after a power loss an object is the old or the new version, never a truncated one.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._meta = self.root / META_DIR
        self._gen_root = self._meta / "gen"
        self._tmp = self._meta / "tmp"
        self._lock_path = self._meta / "lock"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._gen_root.mkdir(parents=True, exist_ok=True)
        self._lock_path.touch(exist_ok=True)
        self._fsync = fsync
        self._counter = 0
        self._counter_lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------

    def _parts(self, path: str) -> tuple[str, ...]:
        if not isinstance(path, str) or not path:
            raise ServoError(f"blob path must be a non-empty string, got {path!r}")
        parts = path.split("/")
        if (
            path.startswith("/")
            or "\\" in path
            or "\x00" in path
            or any(p in ("", ".", "..") for p in parts)
            or parts[0] == META_DIR
        ):
            raise ServoError(
                f"invalid blob path {path!r}: use a relative path of non-empty '/'-separated "
                f"parts without '.', '..', backslashes or a leading {META_DIR!r}"
            )
        return tuple(parts)

    def _data_path(self, parts: tuple[str, ...]) -> Path:
        return self.root.joinpath(*parts)

    def _gen_path(self, parts: tuple[str, ...]) -> Path:
        return self._gen_root.joinpath(*parts)

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _temp_path(self) -> Path:
        with self._counter_lock:
            self._counter += 1
            n = self._counter
        return self._tmp / f"{os.getpid()}-{threading.get_ident()}-{n}"

    def _write_temp(self, data: bytes) -> Path:
        temp = self._temp_path()
        with open(temp, "wb") as handle:
            handle.write(data)
            if self._fsync:
                handle.flush()
                os.fsync(handle.fileno())
        return temp

    def _read_generation(self, parts: tuple[str, ...]) -> int:
        try:
            return int(self._gen_path(parts).read_text("ascii"))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            # An object placed by hand (or a lost generation file) counts as generation 1.
            return 1

    def _write_generation(self, parts: tuple[str, ...], generation: int) -> None:
        target = self._gen_path(parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = self._temp_path()
        temp.write_text(str(generation), "ascii")
        os.replace(temp, target)

    # -- the port ------------------------------------------------------------------------

    def put(self, path: str, data: bytes, *, if_generation: int | None = None) -> int:
        parts = self._parts(path)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ServoError(f"blob {path!r} data must be bytes, got {type(data).__name__}")
        if if_generation is not None and (
            isinstance(if_generation, bool)
            or not isinstance(if_generation, int)
            or if_generation < 0
        ):
            raise ServoError(
                f"if_generation for blob {path!r} must be None, 0 or a generation, "
                f"got {if_generation!r}"
            )
        target = self._data_path(parts)
        temp = self._write_temp(bytes(data))
        try:
            with self._locked(exclusive=True):
                exists = target.is_file()
                current = self._read_generation(parts) if exists else None
                if if_generation == 0 and exists:
                    raise AlreadyExists(
                        f"blob {path!r} already exists (generation {current}); read it and "
                        "write with if_generation set to its generation to replace it"
                    )
                if if_generation not in (None, 0) and if_generation != current:
                    found = "is absent" if current is None else f"is at generation {current}"
                    raise Conflict(
                        f"blob {path!r} {found}, not generation {if_generation}; read it "
                        "again and retry the write"
                    )
                previous = current if current is not None else self._stale_generation(parts)
                generation = max(time.time_ns() // 1000, previous + 1)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # The generation goes first: if we crash before the rename, the old bytes
                    # carry a new generation, which only makes a stale writer retry.
                    self._write_generation(parts, generation)
                    os.replace(temp, target)
                except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
                    raise Conflict(
                        f"blob {path!r} clashes with another object's path (a file and a "
                        "'directory' of the same name cannot both exist on the filesystem); "
                        "choose paths where no object name is a prefix folder of another"
                    ) from exc
                return generation
        finally:
            temp.unlink(missing_ok=True)

    def _stale_generation(self, parts: tuple[str, ...]) -> int:
        # The generation file of a deleted object, if left over, keeps generations growing.
        try:
            return int(self._gen_path(parts).read_text("ascii"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
            return 0

    def get(self, path: str) -> bytes:
        return self.get_with_generation(path)[0]

    def get_with_generation(self, path: str) -> tuple[bytes, int]:
        parts = self._parts(path)
        with self._locked(exclusive=False):
            try:
                handle = open(self._data_path(parts), "rb")  # noqa: SIM115 - read after unlock
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(
                    f"blob {path!r} does not exist under {self.root}; check the path, or "
                    "list() the prefix to see what is there"
                ) from None
            generation = self._read_generation(parts)
        # The open handle pins this version even if a writer replaces the file meanwhile.
        with handle:
            return handle.read(), generation

    def exists(self, path: str) -> bool:
        return self._data_path(self._parts(path)).is_file()

    def list(self, prefix: str) -> list[str]:
        if not isinstance(prefix, str):
            raise ServoError(f"blob prefix must be a string, got {prefix!r}")
        directory_parts = prefix.split("/")[:-1]
        if any(p in (".", "..") or "\\" in p or "\x00" in p for p in directory_parts):
            raise ServoError(
                f"invalid blob prefix {prefix!r}: its folders may not be '.' or '..' or "
                "contain backslashes"
            )
        if "" in directory_parts or directory_parts[:1] == [META_DIR]:
            return []  # no object path has an empty part or starts with the reserved name
        start = self.root.joinpath(*directory_parts)
        found: list[str] = []
        for directory, subdirectories, files in os.walk(start):
            relative = os.path.relpath(directory, self.root)
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            if not base:
                subdirectories[:] = [d for d in subdirectories if d != META_DIR]
            found.extend(name for name in (base + f for f in files) if name.startswith(prefix))
        found.sort()
        return found

    def delete(self, path: str) -> None:
        parts = self._parts(path)
        with self._locked(exclusive=True):
            try:
                os.unlink(self._data_path(parts))
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
            self._gen_path(parts).unlink(missing_ok=True)
            self._prune_empty_parents(parts)

    def _prune_empty_parents(self, parts: tuple[str, ...]) -> None:
        # Object stores have no directories; drop the ones a delete leaves empty. Writers
        # create parents under the same lock, so this cannot pull one from under them.
        for tree in (self.root, self._gen_root):
            for depth in range(len(parts) - 1, 0, -1):
                try:
                    os.rmdir(tree.joinpath(*parts[:depth]))
                except OSError:
                    break
