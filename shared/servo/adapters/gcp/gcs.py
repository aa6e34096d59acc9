"""The ledger and object storage on Cloud Storage.

Both take a ``google.cloud.storage.Bucket`` and a prefix (``""`` for the bucket's root, or
``"a/b"``), and keep everything under it:

* ``GcsLedger``: segment ``seq`` of stream ``s`` is the object
  ``{prefix}/ledger/{s}/{seq:012d}.json``. Each ``/``-separated part of the stream name is
  percent-escaped exactly as the file ledger escapes it (only letters, digits, ``_`` and ``-``
  stay as they are), so ``runs/r1`` and ``runs/r10`` never share a folder, and a segment
  object is created with ``ifGenerationMatch=0``: Cloud Storage creates it at most once.
* ``GcsBlobs``: object ``path`` is ``{prefix}/blobs/{path}``; an object's generation is its
  Cloud Storage generation, so compare-and-set is Cloud Storage's own ``ifGenerationMatch``.

Segments are written with a single-request upload (never a resumable one, whose precondition
handling differs between Cloud Storage and its local fakes), so a segment is limited to
``MAX_SEGMENT_BYTES``.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.api_core import exceptions as google_errors

from servo.adapters.gcp.costs import GCS_CLASS_A, GCS_CLASS_B, GCS_FREE, OperationCounter
from servo.adapters.gcp.errors import translate
from servo.adapters.segments import decode_segment, encode_segment
from servo.core.errors import AlreadyExists, Conflict, NotFound, ServoError
from servo.ports import Doc, Segment

MAX_SEGMENT_BYTES = 4 * 1024 * 1024
"""The largest ledger segment, encoded; well below the client's 8 MiB single-request limit."""

MAX_SEQ = 10**12 - 1
"""The largest segment number: the 12 digits of the object name keep listing order numeric."""

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SEGMENT_NAME = re.compile(r"(\d{12})\.json\Z")
_MAX_NAME_BYTES = 1024  # Cloud Storage's limit on object names
_WRITER_KEY = "servo-writer"
_READ_THREADS = 8


def _clean_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ServoError(f"storage prefix must be a string, got {prefix!r}")
    stripped = prefix.strip("/")
    if stripped and any(part in ("", ".", "..") for part in stripped.split("/")):
        raise ServoError(
            f"invalid storage prefix {prefix!r}: use '/'-separated non-empty parts without "
            "'.' or '..'"
        )
    return stripped + "/" if stripped else ""


def _escape_component(component: str) -> str:
    return "".join(
        ch if ch in _PLAIN else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in component
    )


def _bucket_name(bucket: Any) -> str:
    return str(getattr(bucket, "name", bucket))


class GcsLedger:
    """A :class:`~servo.ports.Ledger` of JSON objects in a bucket; see the module docstring.

    Segments are immutable and never deleted, so the highest sequence number seen for a
    stream is remembered and :meth:`last_seq` only lists what was written after it.
    """

    def __init__(
        self, bucket: Any, prefix: str = "", *, counter: OperationCounter | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = _clean_prefix(prefix)
        self.counter = counter if counter is not None else OperationCounter()
        self._root = f"{self.prefix}ledger/"
        self._known_last: dict[str, int] = {}
        self._lock = threading.Lock()

    def stream_prefix(self, stream: str) -> str:
        """The object name prefix of ``stream``'s segments (ends with ``/``)."""
        if not isinstance(stream, str) or not stream:
            raise ServoError(f"ledger stream name must be a non-empty string, got {stream!r}")
        components = stream.split("/")
        if any(not c for c in components):
            raise ServoError(
                f"invalid ledger stream name {stream!r}: '/'-separated parts must be non-empty"
            )
        name = self._root + "/".join(_escape_component(c) for c in components) + "/"
        if len(name.encode("utf-8")) + len("000000000000.json") > _MAX_NAME_BYTES:
            raise ServoError(
                f"ledger stream name {stream[:60]!r}… is too long for a Cloud Storage object "
                "name once escaped; use a shorter stream name"
            )
        return name

    def _object_name(self, stream: str, seq: int) -> str:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise ServoError(
                f"segment number for ledger stream {stream!r} must be an integer from 0 to "
                f"{MAX_SEQ}, got {seq!r}"
            )
        return f"{self.stream_prefix(stream)}{seq:012d}.json"

    def append(self, stream: str, seq: int, events: Sequence[Doc]) -> None:
        name = self._object_name(stream, seq)
        if isinstance(events, Mapping) or not all(isinstance(e, Mapping) for e in events):
            raise ServoError(
                f"events for segment {seq} of ledger stream {stream!r} must be a list of dicts"
            )
        data = encode_segment(stream, seq, events)
        if len(data) > MAX_SEGMENT_BYTES:
            raise ServoError(
                f"segment {seq} of ledger stream {stream!r} is {len(data)} bytes, more than "
                f"{MAX_SEGMENT_BYTES}; split its events over several segments"
            )
        # A token of this write: if the client retries an upload whose first try did succeed,
        # the retry fails its precondition and the token tells that the object is ours.
        token = secrets.token_hex(16)
        blob = self.bucket.blob(name)
        blob.metadata = {_WRITER_KEY: token}
        try:
            blob.upload_from_string(
                data, content_type="application/octet-stream", if_generation_match=0
            )
        except google_errors.PreconditionFailed:
            if not self._written_by(name, token):
                raise AlreadyExists(
                    f"segment {seq} of ledger stream {stream!r} already exists; segments are "
                    "immutable, so read the stream and append at last_seq + 1"
                ) from None
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"appending segment {seq} of ledger stream {stream!r}") from exc
        finally:
            self.counter.add(GCS_CLASS_A)
        with self._lock:
            if seq > self._known_last.get(stream, -1):
                self._known_last[stream] = seq

    def _written_by(self, name: str, token: str) -> bool:
        try:
            existing = self.bucket.get_blob(name)
        except google_errors.GoogleAPICallError:
            return False
        finally:
            self.counter.add(GCS_CLASS_B)
        return existing is not None and (existing.metadata or {}).get(_WRITER_KEY) == token

    def _list_seqs(self, stream: str, after_seq: int, limit: int | None) -> list[int]:
        prefix = self.stream_prefix(stream)
        start = f"{prefix}{after_seq + 1:012d}.json" if after_seq >= 0 else None
        seqs: list[int] = []
        try:
            iterator = self.bucket.client.list_blobs(
                self.bucket, prefix=prefix, delimiter="/", start_offset=start
            )
            for page in iterator.pages:
                self.counter.add(GCS_CLASS_A)
                for blob in page:
                    match = _SEGMENT_NAME.match(blob.name[len(prefix) :])
                    if match and int(match.group(1)) > after_seq:
                        seqs.append(int(match.group(1)))
                if limit is not None and len(seqs) >= limit:
                    break
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"listing ledger stream {stream!r}") from exc
        seqs.sort()
        return seqs if limit is None else seqs[:limit]

    def read(self, stream: str, after_seq: int = -1, limit: int | None = None) -> list[Segment]:
        return [
            Segment(stream=stream, seq=seq, events=tuple(decode_segment(body)["events"]))
            for seq, body in self.read_encoded(stream, after_seq, limit)
        ]

    def read_encoded(
        self, stream: str, after_seq: int = -1, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        """``(seq, bytes)`` of the segments after ``after_seq`` as stored, for readers that
        decode them in bulk."""
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ServoError(f"ledger read limit must be an integer >= 0, got {limit!r}")
        if isinstance(after_seq, bool) or not isinstance(after_seq, int):
            raise ServoError(f"after_seq must be an integer, got {after_seq!r}")
        if limit == 0:
            self.stream_prefix(stream)
            return []
        seqs = self._list_seqs(stream, max(after_seq, -1), limit)
        if not seqs:
            return []
        names = [self._object_name(stream, seq) for seq in seqs]
        if len(names) == 1:
            bodies = [self._download(names[0])]
        else:
            with ThreadPoolExecutor(min(_READ_THREADS, len(names))) as pool:
                bodies = list(pool.map(self._download, names))
        with self._lock:
            if seqs[-1] > self._known_last.get(stream, -1):
                self._known_last[stream] = seqs[-1]
        return list(zip(seqs, bodies, strict=True))

    def _download(self, name: str) -> bytes:
        try:
            return bytes(self.bucket.blob(name).download_as_bytes())
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"reading ledger segment {name!r}") from exc
        finally:
            self.counter.add(GCS_CLASS_B)

    def last_seq(self, stream: str) -> int:
        with self._lock:
            known = self._known_last.get(stream, -1)
        seqs = self._list_seqs(stream, known, None)
        last = max(seqs[-1] if seqs else -1, known)
        with self._lock:
            if last > self._known_last.get(stream, -1):
                self._known_last[stream] = last
        return last


class GcsBlobs:
    """A :class:`~servo.ports.Blobs` store in a bucket; see the module docstring."""

    def __init__(
        self, bucket: Any, prefix: str = "", *, counter: OperationCounter | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = _clean_prefix(prefix)
        self.counter = counter if counter is not None else OperationCounter()
        self._root = f"{self.prefix}blobs/"

    def object_name(self, path: str) -> str:
        """The Cloud Storage object name of blob ``path``."""
        if not isinstance(path, str) or not path:
            raise ServoError(f"blob path must be a non-empty string, got {path!r}")
        parts = path.split("/")
        if (
            path.startswith("/")
            or any(ch in path for ch in "\r\n\x00")
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise ServoError(
                f"invalid blob path {path!r}: use a relative path of non-empty '/'-separated "
                "parts without '.', '..' or line breaks"
            )
        name = self._root + path
        if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
            raise ServoError(
                f"blob path {path[:60]!r}… is too long: Cloud Storage object names are limited "
                f"to {_MAX_NAME_BYTES} bytes including the prefix {self._root!r}"
            )
        return name

    def put(self, path: str, data: bytes, *, if_generation: int | None = None) -> int:
        name = self.object_name(path)
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
        blob = self.bucket.blob(name)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        try:
            blob.upload_from_string(
                bytes(data), content_type=content_type, if_generation_match=if_generation
            )
        except google_errors.PreconditionFailed:
            if if_generation == 0:
                raise AlreadyExists(
                    f"blob {path!r} already exists; read it and write with if_generation set "
                    "to its generation to replace it"
                ) from None
            raise Conflict(
                f"blob {path!r} is absent or not at generation {if_generation}; read it again "
                "and retry the write"
            ) from None
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"writing blob {path!r}") from exc
        finally:
            self.counter.add(GCS_CLASS_A)
        return int(blob.generation)

    def get(self, path: str) -> bytes:
        return self.get_with_generation(path)[0]

    def get_with_generation(self, path: str) -> tuple[bytes, int]:
        name = self.object_name(path)
        blob = self.bucket.blob(name)
        try:
            data = blob.download_as_bytes()
        except google_errors.NotFound:
            raise NotFound(
                f"blob {path!r} does not exist in gs://{_bucket_name(self.bucket)}/{self._root}; "
                "check the path, or list() the prefix to see what is there"
            ) from None
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"reading blob {path!r}") from exc
        finally:
            self.counter.add(GCS_CLASS_B)
        # The download reports the generation it served, so bytes and generation match.
        return bytes(data), int(blob.generation)

    def exists(self, path: str) -> bool:
        name = self.object_name(path)
        try:
            return bool(self.bucket.blob(name).exists())
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"checking blob {path!r}") from exc
        finally:
            self.counter.add(GCS_CLASS_B)

    def list(self, prefix: str) -> list[str]:
        if not isinstance(prefix, str):
            raise ServoError(f"blob prefix must be a string, got {prefix!r}")
        if any(p in (".", "..") for p in prefix.split("/")[:-1]):
            raise ServoError(f"invalid blob prefix {prefix!r}: its folders may not be '.' or '..'")
        full = self._root + prefix
        names: list[str] = []
        try:
            iterator = self.bucket.client.list_blobs(self.bucket, prefix=full)
            for page in iterator.pages:
                self.counter.add(GCS_CLASS_A)
                names.extend(blob.name[len(self._root) :] for blob in page)
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"listing blobs under {prefix!r}") from exc
        names.sort()
        return names

    def delete(self, path: str) -> None:
        name = self.object_name(path)
        try:
            self.bucket.blob(name).delete()
        except google_errors.NotFound:
            return
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"deleting blob {path!r}") from exc
        finally:
            self.counter.add(GCS_FREE)


__all__ = ["MAX_SEGMENT_BYTES", "GcsBlobs", "GcsLedger"]
