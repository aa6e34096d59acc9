"""Where the projections live: immutable Parquet files and one pointer object, in the Blobs port.

Layout (paths inside the workspace's blobs)::

    projections/pointer.json                         the published view (compare-and-set)
    projections/<table>/v<version>/<epoch>-L<level>-<id>.parquet   immutable table files

The pointer names, for every table, the files whose merged rows are the table, and the ledger
watermark they cover. A compaction writes new files first (create-only) and then replaces the
pointer with a generation precondition, so a reader sees either the old view or the new one,
never a mix; a compactor whose precondition fails has published nothing and only leaves
unreferenced files, which the garbage collection removes.

Files are read straight from disk on the embedded backend (DuckDB scans them in place), through
pyarrow's Cloud Storage filesystem when the blobs are a Cloud Storage bucket, and through the
Blobs port otherwise.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from servo.core.errors import AlreadyExists, Conflict, NotFound, ServoError
from servo.ports import Blobs
from servo.projections.schema import TABLE_SPECS, TableSpec

PREFIX = "projections/"
POINTER_PATH = "projections/pointer.json"
POINTER_FORMAT = 1
ROW_GROUP_ROWS = 65_536

_names = itertools.count()


@dataclass
class FileRef:
    """One immutable file of a table: its path, row count, size and merge level."""

    path: str
    rows: int
    bytes: int
    level: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "level": self.level}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRef:
        return cls(
            path=str(data["path"]),
            rows=int(data.get("rows", 0)),
            bytes=int(data.get("bytes", 0)),
            level=int(data.get("level", 0)),
        )


@dataclass
class TableFiles:
    version: int
    files: list[FileRef] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "files": [f.to_json() for f in self.files]}


@dataclass
class Pointer:
    """The published projection view.

    ``watermark`` is the last ledger segment folded in; ``epoch`` counts publications (a new
    pointer always has a higher epoch and a watermark at least as high); ``events_before_ms``
    is the retention cut-off of the ``events`` table (older events are left out of it);
    ``garbage`` lists files no longer referenced, with when they were retired.
    """

    epoch: int = 0
    watermark: int = -1
    tables: dict[str, TableFiles] = field(default_factory=dict)
    events_before_ms: int | None = None
    logs_before_ms: int | None = None
    garbage: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    published_ms: int = 0
    writer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": POINTER_FORMAT,
            "epoch": self.epoch,
            "watermark": self.watermark,
            "tables": {name: t.to_json() for name, t in sorted(self.tables.items())},
            "events_before_ms": self.events_before_ms,
            "logs_before_ms": self.logs_before_ms,
            "garbage": self.garbage,
            "stats": self.stats,
            "published_ms": self.published_ms,
            "writer": self.writer,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pointer:
        if int(data.get("format", 0)) > POINTER_FORMAT:
            raise ServoError(
                f"the projection pointer {POINTER_PATH} has format {data.get('format')}, newer "
                f"than this Servo understands ({POINTER_FORMAT}); upgrade Servo"
            )
        return cls(
            epoch=int(data["epoch"]),
            watermark=int(data["watermark"]),
            tables={
                name: TableFiles(
                    version=int(t["version"]),
                    files=[FileRef.from_json(f) for f in t.get("files", [])],
                )
                for name, t in data.get("tables", {}).items()
            },
            events_before_ms=data.get("events_before_ms"),
            logs_before_ms=data.get("logs_before_ms"),
            garbage=list(data.get("garbage", [])),
            stats=dict(data.get("stats", {})),
            published_ms=int(data.get("published_ms", 0)),
            writer=str(data.get("writer", "")),
        )

    def referenced(self) -> set[str]:
        return {f.path for t in self.tables.values() for f in t.files}

    def table_files(self, name: str) -> list[FileRef]:
        spec = TABLE_SPECS[name]
        t = self.tables.get(name)
        if t is None or t.version != spec.version:
            return []
        return t.files

    def current(self) -> bool:
        """Whether every table is at the version this Servo writes."""
        return all(
            name in self.tables and self.tables[name].version == spec.version
            for name, spec in TABLE_SPECS.items()
        )


class ProjectionStore:
    """Reads and writes projection files and the pointer through the Blobs port."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs
        root = getattr(blobs, "root", None)
        self.local_root: Path | None = Path(root) if isinstance(root, (str, Path)) else None
        self._gcs: Any = None

    # -- the pointer ----------------------------------------------------------------------

    def load_pointer(self) -> tuple[Pointer | None, int]:
        """The published pointer and its generation (``None, 0`` before the first one)."""
        try:
            data, generation = self.blobs.get_with_generation(POINTER_PATH)
        except NotFound:
            return None, 0
        return Pointer.from_json(json.loads(data)), generation

    def publish(self, pointer: Pointer, generation: int) -> bool:
        """Replace the pointer if it is still at ``generation``; False if another won."""
        body = json.dumps(pointer.to_json(), sort_keys=True, separators=(",", ":")).encode()
        try:
            self.blobs.put(POINTER_PATH, body, if_generation=generation)
        except (Conflict, AlreadyExists):
            return False
        return True

    # -- files ----------------------------------------------------------------------------

    def new_path(self, spec: TableSpec, epoch: int, level: int, unique: str) -> str:
        return f"{PREFIX}{spec.name}/v{spec.version}/{epoch:010d}-L{level}-{unique}.parquet"

    def write(self, spec: TableSpec, table: pa.Table, path: str, level: int) -> FileRef:
        buffer = io.BytesIO()
        # Statistics only where they prune row groups (keys, sort order, time), and no
        # embedded Arrow schema (readers cast to the table's spec): small files stay small.
        pruning = sorted({*spec.key, *spec.sort, "time_ms"} & set(spec.column_names))
        pq.write_table(
            table.cast(spec.schema),
            buffer,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
            store_schema=False,
            write_statistics=pruning,
        )
        data = buffer.getvalue()
        self.blobs.put(path, data, if_generation=0)
        return FileRef(path=path, rows=table.num_rows, bytes=len(data), level=level)

    def delete(self, path: str) -> None:
        self.blobs.delete(path)

    def list_files(self) -> list[str]:
        return [p for p in self.blobs.list(PREFIX) if p.endswith(".parquet")]

    def _gcs_filesystem(self) -> Any:
        if self._gcs is None:
            from pyarrow import fs

            host = os.environ.get("STORAGE_EMULATOR_HOST")
            if host:
                scheme, _, address = host.rpartition("://")
                self._gcs = fs.GcsFileSystem(
                    anonymous=True, endpoint_override=address, scheme=scheme or "http"
                )
            else:
                self._gcs = fs.GcsFileSystem()
        return self._gcs

    def _gcs_name(self, path: str) -> str | None:
        bucket = getattr(self.blobs, "bucket", None)
        object_name = getattr(self.blobs, "object_name", None)
        if bucket is None or not callable(object_name):
            return None
        return f"{getattr(bucket, 'name', bucket)}/{object_name(path)}"

    def read_arrow(self, spec: TableSpec, paths: Sequence[str]) -> pa.Table:
        """The rows of ``paths`` concatenated (not merged), as Arrow."""
        tables: list[pa.Table] = []
        for path in paths:
            if self.local_root is not None:
                tables.append(pq.read_table(self.local_root / path))
                continue
            gcs_name = self._gcs_name(path)
            if gcs_name is not None:
                tables.append(pq.read_table(gcs_name, filesystem=self._gcs_filesystem()))
            else:
                tables.append(pq.read_table(pa.BufferReader(self.blobs.get(path))))
        if not tables:
            return spec.schema.empty_table()
        return pa.concat_tables([t.cast(spec.schema) for t in tables])

    def source(
        self, con: duckdb.DuckDBPyConnection, spec: TableSpec, paths: Sequence[str]
    ) -> tuple[str, list[str]]:
        """A SQL relation over the rows of ``paths`` and the names to unregister afterwards.

        Local files are scanned in place by DuckDB (projection pushdown, row-group pruning);
        other stores are read into Arrow first.
        """
        if not paths:
            name = f"__empty_{spec.name}_{next(_names)}"
            con.register(name, spec.schema.empty_table())
            return name, [name]
        if self.local_root is not None:
            files = ", ".join(_sql_string(str(self.local_root / p)) for p in paths)
            return f"read_parquet([{files}])", []
        name = f"__files_{spec.name}_{next(_names)}"
        con.register(name, self.read_arrow(spec, paths))
        return name, [name]


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
