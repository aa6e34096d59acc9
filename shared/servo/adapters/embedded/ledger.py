"""The ledger as a tree of immutable JSON files, one per segment.

Segment ``seq`` of stream ``s`` is the file ``<root>/<s>/<seq, 12 digits>.json``. It is
written to a temporary file first and then hard-linked to its final name; ``link`` fails when
the name exists, so a segment is created at most once even when several threads or processes
race for it, and a reader either sees the complete file or no file at all.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from servo.adapters.segments import decode_segment, encode_segment
from servo.core.errors import AlreadyExists, ServoError
from servo.ports import Doc, Segment

_SEGMENT_NAME = re.compile(r"(\d+)\.json\Z")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_COMPONENT_BYTES = 200  # below the usual 255-byte limit on file names


def _encode_component(stream: str, component: str) -> str:
    # Escaping '.' as well means no component can be '.', '..' or look like a segment file.
    encoded = "".join(
        ch if ch in _PLAIN else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in component
    )
    if len(encoded) > _MAX_COMPONENT_BYTES:
        raise ServoError(
            f"ledger stream {stream!r} has a path component that is too long once escaped "
            f"for the filesystem; keep each '/'-separated part under ~{_MAX_COMPONENT_BYTES // 3} "
            "characters"
        )
    return encoded


def stream_directory(root: Path, stream: str) -> Path:
    """The directory that holds the segments of ``stream`` under ``root``."""
    if not isinstance(stream, str) or not stream:
        raise ServoError(f"ledger stream name must be a non-empty string, got {stream!r}")
    components = stream.split("/")
    if any(not c for c in components):
        raise ServoError(
            f"invalid ledger stream name {stream!r}: '/'-separated parts must be non-empty"
        )
    return root.joinpath(*(_encode_component(stream, c) for c in components))


def _check_seq(stream: str, seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ServoError(
            f"segment number for ledger stream {stream!r} must be an integer >= 0, got {seq!r}"
        )


class FileLedger:
    """A :class:`~servo.ports.Ledger` of JSON files under ``root``.

    ``fsync`` (default on) flushes each segment to disk before it becomes visible, so that even
    after a power loss a segment that exists is complete.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._tmp_counter = 0
        self._tmp_lock = threading.Lock()

    def _temp_name(self) -> str:
        with self._tmp_lock:
            self._tmp_counter += 1
            n = self._tmp_counter
        # Starts with '.' so it never matches a segment name; unique per process and call.
        return f".tmp-{os.getpid()}-{threading.get_ident()}-{n}"

    def append(self, stream: str, seq: int, events: Sequence[Doc]) -> None:
        _check_seq(stream, seq)
        directory = stream_directory(self.root, stream)
        if not all(isinstance(event, Mapping) for event in events):
            raise ServoError(
                f"events for segment {seq} of ledger stream {stream!r} must be a list of dicts"
            )
        data = encode_segment(stream, seq, events)
        final = directory / f"{seq:012d}.json"
        if final.exists():
            raise self._exists(stream, seq)
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / self._temp_name()
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                if self._fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            try:
                os.link(temp, final)
            except FileExistsError:
                raise self._exists(stream, seq) from None
        finally:
            temp.unlink(missing_ok=True)

    @staticmethod
    def _exists(stream: str, seq: int) -> AlreadyExists:
        return AlreadyExists(
            f"segment {seq} of ledger stream {stream!r} already exists; segments are immutable, "
            "so read the stream and append at last_seq + 1"
        )

    def _sequence_numbers(self, stream: str) -> list[int]:
        directory = stream_directory(self.root, stream)
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            return []
        with entries:
            numbers = [
                int(match.group(1))
                for entry in entries
                if (match := _SEGMENT_NAME.match(entry.name)) and entry.is_file()
            ]
        numbers.sort()
        return numbers

    def read(self, stream: str, after_seq: int = -1, limit: int | None = None) -> list[Segment]:
        return [
            Segment(stream=stream, seq=seq, events=tuple(decode_segment(data)["events"]))
            for seq, data in self.read_encoded(stream, after_seq, limit)
        ]

    def read_encoded(
        self, stream: str, after_seq: int = -1, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        """``(seq, bytes)`` of the segments after ``after_seq`` as stored (see
        :mod:`servo.adapters.segments`), for readers that decode them in bulk."""
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ServoError(f"ledger read limit must be an integer >= 0, got {limit!r}")
        wanted = [n for n in self._sequence_numbers(stream) if n > after_seq]
        if limit is not None:
            wanted = wanted[:limit]
        directory = stream_directory(self.root, stream)
        return [(seq, (directory / f"{seq:012d}.json").read_bytes()) for seq in wanted]

    def last_seq(self, stream: str) -> int:
        numbers = self._sequence_numbers(stream)
        return numbers[-1] if numbers else -1
