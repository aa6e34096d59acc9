"""Capturing an attempt's output: stdout, stderr and ``context.log`` records, in one text.

Output is redirected at the file-descriptor level (``dup2`` onto descriptors 1 and 2), so
writes from C extensions and from subprocesses the asset starts land in the same place as
``print``. ``sys.stdout``/``sys.stderr`` are replaced as well, because they are not always
backed by descriptors 1 and 2 (pytest, notebooks and some servers swap them).

Everything goes into one anonymous temporary file whose descriptors all share a single file
offset, so the text interleaves in the order it was written. Reading uses ``pread`` and never
moves that offset, which lets a heartbeat publish the partial log of a running attempt.

File descriptors belong to the whole process: only one capture at a time can redirect them.
A second, concurrent capture (an attempt run on another thread) records only its log records
and says so at the top of its text.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
import threading
from types import TracebackType
from typing import TextIO, cast

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s - %(message)s"

_FD_OWNER = threading.Lock()


_LIBC: list[ctypes.CDLL | None] = []


def _flush_c_stdio() -> None:
    # C code that printf()s keeps its text in libc's buffer; flush it while the descriptors
    # still point at the capture file.
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None))
        except OSError:
            _LIBC.append(None)
    libc = _LIBC[0]
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.fflush(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _RecordHandler(logging.Handler):
    """Writes formatted log records into the capture file."""

    def __init__(self, fd: int) -> None:
        super().__init__(logging.DEBUG)
        self._fd = fd
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            _write_all(self._fd, text.encode("utf-8", "backslashreplace"))
        except Exception:
            self.handleError(record)


class _CaptureBuffer:
    """The ``.buffer`` of a :class:`_CaptureStream`, for code that writes bytes."""

    def __init__(self, stream: _CaptureStream) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        return self._stream.write_bytes(bytes(data))

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()


class _CaptureStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` during an attempt.

    Code that keeps a reference to it beyond the attempt (``logging.basicConfig()`` called by
    an asset) would otherwise write into a closed file; after :meth:`release` it forwards to
    the stream it replaced.
    """

    def __init__(self, fd: int, replaced: TextIO) -> None:
        super().__init__()
        self._fd: int | None = fd
        self._replaced = replaced
        self.buffer = _CaptureBuffer(self)

    def release(self) -> None:
        self._fd = None

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only in io.TextIOBase too
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False if self._fd is not None else self._replaced.isatty()

    def fileno(self) -> int:
        return self._fd if self._fd is not None else self._replaced.fileno()

    def write(self, text: str) -> int:
        fd = self._fd
        if fd is None:
            return self._replaced.write(text)
        _write_all(fd, text.encode("utf-8", "backslashreplace"))
        return len(text)

    def write_bytes(self, data: bytes) -> int:
        fd = self._fd
        if fd is None:
            replaced_buffer = getattr(self._replaced, "buffer", None)
            if replaced_buffer is not None:
                return int(replaced_buffer.write(data))
            self._replaced.write(data.decode("utf-8", "replace"))
            return len(data)
        _write_all(fd, data)
        return len(data)

    def flush(self) -> None:
        if self._fd is None:
            self._replaced.flush()


class OutputCapture:
    """Collects what one attempt writes, from :meth:`start` to :meth:`stop`.

    ``redirect`` False records only log records and :meth:`note` text (used where stdout must
    stay with the caller).
    """

    def __init__(self, *, redirect: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._redirect_wanted = redirect
        self._max_bytes = max_bytes
        fd, name = tempfile.mkstemp(prefix="servo-attempt-", suffix=".log")
        os.unlink(name)
        self._fd = fd
        self._owns_fds = False
        self._saved_fds: list[tuple[int, int]] = []
        self._saved_streams: tuple[TextIO, TextIO] | None = None
        self._streams: list[_CaptureStream] = []
        self._started = False
        self._closed = False
        self.redirected = False

    def __enter__(self) -> OutputCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def handler(self) -> logging.Handler:
        """A logging handler that writes records into this capture."""
        return _RecordHandler(self._fd)

    def logger(self, name: str) -> logging.Logger:
        """A logger that writes only into this capture (not registered globally)."""
        log = logging.Logger(name, logging.DEBUG)
        log.propagate = False
        log.addHandler(self.handler())
        return log

    def note(self, text: str) -> None:
        """Append Servo's own text (an error, a notice) to the captured output."""
        if not text.endswith("\n"):
            text += "\n"
        _write_all(self._fd, text.encode("utf-8", "backslashreplace"))

    def start(self) -> None:
        """Begin redirecting stdout and stderr into the capture."""
        if self._started:
            return
        self._started = True
        if not self._redirect_wanted:
            return
        if not _FD_OWNER.acquire(blocking=False):
            self.note(
                "[servo] stdout/stderr of this attempt are not captured: another attempt in "
                "the same process holds them; only context.log records are recorded"
            )
            return
        self._owns_fds = True
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        for target in (1, 2):
            try:
                saved = os.dup(target)
            except OSError:
                continue  # descriptor not open in this process; nothing to capture there
            os.dup2(self._fd, target)
            self._saved_fds.append((target, saved))
        self._saved_streams = (sys.stdout, sys.stderr)
        self._streams = [_CaptureStream(self._fd, s) for s in self._saved_streams]
        sys.stdout = cast(TextIO, self._streams[0])
        sys.stderr = cast(TextIO, self._streams[1])
        self.redirected = True

    def stop(self) -> None:
        """Restore stdout and stderr; the captured text stays readable until :meth:`close`."""
        if not self._owns_fds:
            return
        self._owns_fds = False
        try:
            if self._saved_streams is not None:
                # Objects that kept a reference to the original streams may still buffer text
                # written during the attempt; flush it while it still lands in the capture.
                for stream in self._saved_streams:
                    with contextlib.suppress(Exception):
                        stream.flush()
                sys.stdout, sys.stderr = self._saved_streams
                self._saved_streams = None
            _flush_c_stdio()
            for target, saved in self._saved_fds:
                os.dup2(saved, target)
                os.close(saved)
            self._saved_fds = []
            for capturing in self._streams:
                capturing.release()
            self._streams = []
        finally:
            _FD_OWNER.release()

    def size(self) -> int:
        """How many bytes have been captured so far."""
        return os.fstat(self._fd).st_size

    def read_bytes(self) -> bytes:
        """The captured bytes so far; the middle is elided when they exceed ``max_bytes``."""
        size = self.size()
        if size <= self._max_bytes:
            return os.pread(self._fd, size, 0)
        half = self._max_bytes // 2
        head = os.pread(self._fd, half, 0)
        tail = os.pread(self._fd, half, size - half)
        marker = f"\n[servo] ... {size - 2 * half} bytes of output omitted ...\n"
        return head + marker.encode("ascii") + tail

    def text(self) -> str:
        """The captured output so far, as text."""
        return self.read_bytes().decode("utf-8", "replace")

    def close(self) -> None:
        """Stop capturing (if needed) and release the temporary file."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        os.close(self._fd)
