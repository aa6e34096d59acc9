"""The state store on SQLite: serializable transactions over JSON documents.

One SQLite file holds the documents of every tenant and workspace; a store instance is bound
to one of them. Several threads and several processes (a CLI next to a dev server) may use the
same file at once:

* the database runs in WAL mode, so reads never block and never see a half-applied write;
* every transaction starts with ``BEGIN IMMEDIATE``, which takes SQLite's single write lock
  before the first read. Transactions on one file therefore run one at a time, which makes
  them serializable without any validation step; contention only means waiting (up to
  ``busy_timeout_s``) and, past that, a retry;
* each thread has its own connection, because a SQLite connection must not be shared by
  threads that use it concurrently; within one process a lock per file hands the write lock
  over between threads directly instead of through SQLite's sleeping busy handler.

Commits use ``synchronous=NORMAL``: a crash of the process never loses or corrupts a committed
transaction, a power loss may lose the last few. Pass ``synchronous="FULL"`` to trade speed for
that last bit of durability.

Queries follow Firestore's semantics for the value types Servo stores (int, str, bool, None):
a filter only matches values of the same type as its operand (``array_contains`` looks for an
element of that type in a list), documents that lack the field never match, ``!=`` skips null
values, and ``order_by`` skips documents without the field and sorts across types as
null < bool < number < string. Filters on ``INDEXED_FIELDS`` use
expression indexes, so the control plane's per-callback queries stay cheap as tables grow.
"""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from servo.core.errors import AlreadyExists, NotFound, ServoError, TransientError
from servo.ports import Doc, StateTxn, Where

T = TypeVar("T")

SCHEMA_VERSION = 1
INDEXED_FIELDS: tuple[str, ...] = ("run_id", "state", "status", "due_at")
"""Top-level fields with an expression index; filters on them never scan a collection."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}\Z")
_RESERVED_ID = re.compile(r"__.*__\Z", re.DOTALL)
_MAX_ID_BYTES = 1500
_IN_CHUNK = 500  # stays far below SQLite's limit on bound parameters
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

# Firestore's order across types; bools share a rank because json_extract gives 0 and 1.
_TYPE_RANK_SQL = (
    "CASE {t} WHEN 'null' THEN 0 WHEN 'false' THEN 1 WHEN 'true' THEN 1 "
    "WHEN 'integer' THEN 2 WHEN 'real' THEN 2 WHEN 'text' THEN 3 "
    "WHEN 'array' THEN 4 ELSE 5 END"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    pk INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    workspace TEXT NOT NULL,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (tenant, workspace, collection, id)
);
"""
# A rowid table rather than WITHOUT ROWID: with the documents clustered by id, SQLite's
# planner preferred scanning a whole collection over seeking an expression index.


def _index_ddl(field: str) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS docs_by_{field} ON docs "
        f"(tenant, workspace, collection, json_extract(data, '$.{field}'), id)"
    )


# One lock per database file and process: threads of one process queue on it rather than on
# SQLite's busy handler, which polls with sleeps of up to 100 ms.
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock_for(path: str) -> threading.Lock:
    with _write_locks_guard:
        lock = _write_locks.get(path)
        if lock is None:
            lock = _write_locks[path] = threading.Lock()
        return lock


def _forget_locks_after_fork() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _write_locks_guard
    _write_locks.clear()
    _write_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_locks_after_fork)


class _Connection:
    """A thread's connection; a wrapper because sqlite3 connections take no weak references."""

    __slots__ = ("__weakref__", "db", "in_transaction")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.in_transaction = False


def _is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _dumps(collection: str, doc_id: str, data: Mapping[str, Any]) -> str:
    if not isinstance(data, Mapping):
        raise ServoError(
            f"document {collection}/{doc_id} must be a dict, got {type(data).__name__}"
        )
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ServoError(
            f"document {collection}/{doc_id} is not JSON-compatible ({exc}); "
            "store only str, int, bool, None, lists and dicts"
        ) from exc


def _check_collection(collection: str) -> None:
    if not isinstance(collection, str) or not _COLLECTION.match(collection):
        raise ServoError(
            f"invalid collection name {collection!r}: use a letter or underscore followed by "
            "up to 99 letters, digits, '_' or '-'"
        )


def _check_id(collection: str, doc_id: str) -> None:
    if not isinstance(doc_id, str) or not doc_id:
        raise ServoError(f"document id in {collection} must be a non-empty string, got {doc_id!r}")
    if "/" in doc_id or doc_id in (".", "..") or _RESERVED_ID.match(doc_id):
        raise ServoError(
            f"invalid document id {doc_id!r} in {collection}: ids may not contain '/', be "
            "'.' or '..', or look like __name__ (Firestore reserves these)"
        )
    if len(doc_id.encode("utf-8")) > _MAX_ID_BYTES:
        raise ServoError(
            f"document id in {collection} is longer than {_MAX_ID_BYTES} bytes: "
            f"{doc_id[:40]!r}…; use a shorter id (for example a hash)"
        )


def _check_field(field: str) -> None:
    if not isinstance(field, str) or not _IDENTIFIER.match(field):
        raise ServoError(
            f"cannot query on field {field!r}: queries support top-level fields whose names "
            "are identifiers (letters, digits and '_', not starting with a digit)"
        )


_Kind = Literal["null", "bool", "num", "text"]


def _kind(field: str, value: Any) -> _Kind:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ServoError(f"query value for {field!r} is outside the 64-bit range: {value}")
        return "num"
    if isinstance(value, float):
        return "num"
    if isinstance(value, str):
        return "text"
    raise ServoError(
        f"cannot compare field {field!r} with a {type(value).__name__}: query values must be "
        "str, int, bool or None"
    )


def _param(value: Any) -> Any:
    # json_extract reports true/false as 1/0.
    return int(value) if isinstance(value, bool) else value


@dataclass(frozen=True, slots=True)
class _Sql:
    text: str
    params: tuple[Any, ...]


def _field_exprs(field: str) -> tuple[str, str]:
    path = f"'$.{field}'"
    return f"json_extract(data, {path})", f"json_type(data, {path})"


def _equal_sql(field: str, value: Any, exprs: tuple[str, str] | None = None) -> _Sql:
    # Every form compares the value expression itself, so that an index on it can seek; the
    # type test then rejects values of another type that compare equal in SQLite (true and
    # 1, a missing field and null).
    value_expr, type_expr = exprs or _field_exprs(field)
    kind = _kind(field, value)
    if kind == "null":
        return _Sql(f"({value_expr} IS NULL AND {type_expr} = 'null')", ())
    if kind == "bool":
        return _Sql(
            f"({value_expr} = {int(value)} AND {type_expr} = '{'true' if value else 'false'}')",
            (),
        )
    guard = "IN ('integer', 'real')" if kind == "num" else "= 'text'"
    return _Sql(f"({value_expr} = ? AND {type_expr} {guard})", (value,))


def _condition_sql(where: Where) -> _Sql:
    field, op, value = where.field, where.op, where.value
    _check_field(field)
    value_expr, type_expr = _field_exprs(field)
    if op == "==":
        return _equal_sql(field, value)
    if op == "!=":
        exists = f"{type_expr} IS NOT NULL AND {type_expr} != 'null'"
        if value is None:
            return _Sql(f"({exists})", ())
        equal = _equal_sql(field, value)
        return _Sql(f"({exists} AND NOT {equal.text})", equal.params)
    if op in ("<", "<=", ">", ">="):
        kind = _kind(field, value)
        if kind == "null":
            raise ServoError(
                f"cannot use {op!r} with None on field {field!r}: null only supports == and !="
            )
        guard = {
            "bool": "IN ('true', 'false')",
            "num": "IN ('integer', 'real')",
            "text": "= 'text'",
        }[kind]
        return _Sql(f"({value_expr} {op} ? AND {type_expr} {guard})", (_param(value),))
    if op == "in":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise ServoError(
                f"the 'in' filter on field {field!r} needs a non-empty list of values, "
                f"got {value!r}"
            )
        kinds = {_kind(field, v) for v in value}
        if len(kinds) == 1 and kinds <= {"num", "text"}:
            # One IN over the indexed expression lets SQLite seek the index per value.
            guard = "IN ('integer', 'real')" if kinds == {"num"} else "= 'text'"
            marks = ", ".join("?" for _ in value)
            return _Sql(f"({value_expr} IN ({marks}) AND {type_expr} {guard})", tuple(value))
        parts = [_equal_sql(field, v) for v in value]
        return _Sql(
            "(" + " OR ".join(p.text for p in parts) + ")",
            tuple(param for p in parts for param in p.params),
        )
    if op == "array_contains":
        # json_each walks a scalar as a one-element list, hence the test for an array.
        element = _equal_sql(field, value, ("element.value", "element.type"))
        return _Sql(
            f"({type_expr} = 'array' AND EXISTS (SELECT 1 FROM json_each(data, '$.{field}') "
            f"AS element WHERE {element.text}))",
            element.params,
        )
    raise ServoError(
        f"unknown query operator {op!r} on field {field!r}; use one of "
        "==, !=, <, <=, >, >=, in, array_contains"
    )


def _seek_rank(where: Where) -> int | None:
    """How well an index on the filter's field narrows the rows: lower is better."""
    if where.field not in INDEXED_FIELDS:
        return None
    if where.op == "==":
        return 0
    if where.op == "in":
        values = where.value if isinstance(where.value, (list, tuple)) else ()
        kinds = {_kind(where.field, v) for v in values}
        return 1 if len(kinds) == 1 and kinds <= {"num", "text"} else None
    if where.op in ("<", "<=", ">", ">="):
        return 2
    return None


def _pins_one_type(where: Where) -> bool:
    """Whether a filter restricts its field to values of a single type."""
    if where.op in ("!=", "array_contains"):
        return False
    if where.op == "in":
        values = where.value if isinstance(where.value, (list, tuple)) else ()
        return len({_kind(where.field, v) for v in values}) == 1
    return True


def _select_sql(
    scope: tuple[str, str],
    collection: str,
    where: Sequence[Where],
    order_by: str | None,
    limit: int | None,
) -> _Sql:
    _check_collection(collection)
    clauses = ["tenant = ?", "workspace = ?", "collection = ?"]
    params: list[Any] = [scope[0], scope[1], collection]
    for condition in where:
        sql = _condition_sql(condition)
        clauses.append(sql.text)
        params.extend(sql.params)
    if order_by is None:
        order = "id"
    else:
        descending = order_by.startswith("-")
        field = order_by[1:] if descending else order_by
        direction = " DESC" if descending else ""
        _check_field(field)
        value_expr, type_expr = _field_exprs(field)
        clauses.append(f"{type_expr} IS NOT NULL")
        if any(w.field == field and _pins_one_type(w) for w in where):
            # All candidates have one type, so the value alone orders them and an index on
            # the field can deliver rows already sorted.
            order = f"{value_expr}{direction}, id{direction}"
        else:
            order = f"{_TYPE_RANK_SQL.format(t=type_expr)}{direction}, {value_expr}{direction}, id{direction}"
    # Name the index explicitly: without statistics SQLite sometimes prefers walking the
    # whole collection in id order over seeking the field index and sorting the few matches.
    ranked = [(rank, w.field) for w in where if (rank := _seek_rank(w)) is not None]
    hint = f" INDEXED BY docs_by_{min(ranked)[1]}" if ranked else ""
    text = f"SELECT id, data FROM docs{hint} WHERE {' AND '.join(clauses)} ORDER BY {order}"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ServoError(f"query limit must be an integer >= 0, got {limit!r}")
        text += " LIMIT ?"
        params.append(limit)
    return _Sql(text, tuple(params))


class _SqliteTxn:
    """The :class:`~servo.ports.StateTxn` handed to a transaction function."""

    def __init__(self, db: sqlite3.Connection, scope: tuple[str, str]) -> None:
        self._db = db
        self._scope = scope
        self._wrote = False
        self._open = True

    def _before_read(self, what: str) -> None:
        self._check_open()
        if self._wrote:
            raise ServoError(
                f"transaction {what} after a write: read every document first, then write "
                "(Firestore transactions require all reads before the first write)"
            )

    def _before_write(self) -> None:
        self._check_open()
        self._wrote = True

    def _check_open(self) -> None:
        if not self._open:
            raise ServoError(
                "this transaction has already finished; use the txn only inside the function "
                "passed to transact()"
            )

    def close(self) -> None:
        self._open = False

    def _load(self, collection: str, doc_id: str) -> Doc | None:
        row = self._db.execute(
            "SELECT data FROM docs WHERE tenant = ? AND workspace = ? AND collection = ? "
            "AND id = ?",
            (*self._scope, collection, doc_id),
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def get(self, collection: str, doc_id: str) -> Doc | None:
        self._before_read("get")
        _check_collection(collection)
        _check_id(collection, doc_id)
        return self._load(collection, doc_id)

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Doc]:
        self._before_read("get_many")
        return _get_many(self._db, self._scope, collection, doc_ids)

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        self._before_read("query")
        return _run_query(self._db, _select_sql(self._scope, collection, where, order_by, limit))

    def create(self, collection: str, doc_id: str, data: Doc) -> None:
        self._before_write()
        _check_collection(collection)
        _check_id(collection, doc_id)
        text = _dumps(collection, doc_id, data)
        try:
            self._db.execute(
                "INSERT INTO docs (tenant, workspace, collection, id, data) VALUES (?, ?, ?, ?, ?)",
                (*self._scope, collection, doc_id, text),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(
                f"document {collection}/{doc_id} already exists; use set() to overwrite it "
                "or update() to change some fields"
            ) from exc

    def set(self, collection: str, doc_id: str, data: Doc) -> None:
        self._before_write()
        _check_collection(collection)
        _check_id(collection, doc_id)
        self._db.execute(
            "INSERT INTO docs (tenant, workspace, collection, id, data) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, workspace, collection, id) DO UPDATE SET data = excluded.data",
            (*self._scope, collection, doc_id, _dumps(collection, doc_id, data)),
        )

    def update(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        self._before_write()
        _check_collection(collection)
        _check_id(collection, doc_id)
        current = self._load(collection, doc_id)
        if current is None:
            raise NotFound(
                f"cannot update document {collection}/{doc_id}: it does not exist; "
                "use create() or set() to write a new document"
            )
        current.update(fields)
        self._db.execute(
            "UPDATE docs SET data = ? WHERE tenant = ? AND workspace = ? AND collection = ? "
            "AND id = ?",
            (_dumps(collection, doc_id, current), *self._scope, collection, doc_id),
        )

    def delete(self, collection: str, doc_id: str) -> None:
        self._before_write()
        _check_collection(collection)
        _check_id(collection, doc_id)
        self._db.execute(
            "DELETE FROM docs WHERE tenant = ? AND workspace = ? AND collection = ? AND id = ?",
            (*self._scope, collection, doc_id),
        )


def _get_many(
    db: sqlite3.Connection, scope: tuple[str, str], collection: str, doc_ids: Sequence[str]
) -> dict[str, Doc]:
    _check_collection(collection)
    if isinstance(doc_ids, str):
        raise ServoError(f"get_many on {collection} needs a sequence of ids, not one string")
    unique = list(dict.fromkeys(doc_ids))
    for doc_id in unique:
        _check_id(collection, doc_id)
    found: dict[str, Doc] = {}
    for start in range(0, len(unique), _IN_CHUNK):
        chunk = unique[start : start + _IN_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = db.execute(
            "SELECT id, data FROM docs WHERE tenant = ? AND workspace = ? AND collection = ? "
            f"AND id IN ({marks})",
            (*scope, collection, *chunk),
        )
        for doc_id, text in rows:
            found[doc_id] = json.loads(text)
    return found


def _run_query(db: sqlite3.Connection, sql: _Sql) -> list[tuple[str, Doc]]:
    return [(doc_id, json.loads(text)) for doc_id, text in db.execute(sql.text, sql.params)]


class SqliteStateStore:
    """A :class:`~servo.ports.StateStore` in one SQLite file, bound to a tenant and workspace.

    Safe to share between threads; other processes may open the same file. Call
    :meth:`close` (or use the store as a context manager) to close every connection.
    """

    def __init__(
        self,
        path: Path,
        tenant: str = "default",
        workspace: str = "default",
        *,
        busy_timeout_s: float = 5.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        for label, value in (("tenant", tenant), ("workspace", workspace)):
            if not isinstance(value, str) or not value:
                raise ServoError(f"state store {label} must be a non-empty string, got {value!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ServoError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self.tenant = tenant
        self.workspace = workspace
        self._scope = (tenant, workspace)
        self._busy_timeout_ms = max(0, int(busy_timeout_s * 1000))
        self._synchronous = synchronous
        self._key = str(self.path.resolve())
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._initialize()

    # -- connections ---------------------------------------------------------------------

    def _open(self) -> _Connection:
        try:
            db = sqlite3.connect(
                self._key,
                isolation_level=None,  # transactions are begun explicitly
                check_same_thread=False,  # only so that close() may close it from elsewhere
                timeout=self._busy_timeout_ms / 1000,
            )
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc
        conn = _Connection(db)
        with self._connections_lock:
            self._connections.add(conn)
        return conn

    def _conn(self) -> _Connection:
        if self._closed:
            raise ServoError(f"state store {self.path} is closed")
        if os.getpid() != self._pid:
            # A connection must not cross a fork: start afresh in the child, and keep the
            # inherited objects alive so that their destructors never touch the file.
            _inherited_after_fork.append((self._local, self._connections))
            self._pid = os.getpid()
            self._local = threading.local()
            self._connections = weakref.WeakSet()
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _initialize(self) -> None:
        db = self._conn().db
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            with self._write_transaction(db):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ServoError(
                        f"state database {self.path} has schema version {version}, newer than "
                        f"this Servo understands ({SCHEMA_VERSION}); upgrade Servo"
                    )
                db.execute(_SCHEMA)
                for field in INDEXED_FIELDS:
                    db.execute(_index_ddl(field))
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise self._translate(exc, "initialize") from exc
        if str(mode).lower() != "wal":
            raise ServoError(
                f"state database {self.path} cannot use write-ahead logging (journal mode "
                f"{mode!r}); put .servo on a local filesystem"
            )

    @contextmanager
    def _write_transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        with _write_lock_for(self._key):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _translate(self, exc: sqlite3.Error, action: str) -> ServoError:
        if _is_busy(exc):
            return TransientError(
                f"state database {self.path} stayed locked by another writer during {action}; "
                "retry, and check for a process holding a long transaction"
            )
        return ServoError(f"state database {self.path} failed during {action}: {exc}")

    def close(self) -> None:
        """Close every connection of this store; it cannot be used afterwards."""
        self._closed = True
        with self._connections_lock:
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
        for conn in connections:
            conn.db.close()
        self._local = threading.local()

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the port ------------------------------------------------------------------------

    def transact(self, fn: Callable[[StateTxn], T], *, max_attempts: int = 8) -> T:
        """Run ``fn`` in a serializable transaction; see :class:`~servo.ports.StateStore`.

        Raises ``TransientError`` when the database stayed locked by other processes through
        ``max_attempts`` waits of ``busy_timeout_s``.
        """
        if max_attempts < 1:
            raise ServoError(f"max_attempts must be at least 1, got {max_attempts}")
        conn = self._conn()
        if conn.in_transaction:
            raise ServoError(
                f"transact() on {self.path} was called inside another transaction of the same "
                "store; pass the outer txn down instead of starting a nested transaction"
            )
        last_error: sqlite3.Error | None = None
        for attempt in range(max_attempts):
            if attempt:
                time.sleep(random.uniform(0.0, min(0.1, 0.002 * 2**attempt)))
            txn = _SqliteTxn(conn.db, self._scope)
            conn.in_transaction = True
            try:
                with self._write_transaction(conn.db):
                    result = fn(txn)
                return result
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self._translate(exc, "a transaction") from exc
                last_error = exc
            finally:
                txn.close()
                conn.in_transaction = False
        assert last_error is not None
        raise self._translate(last_error, f"{max_attempts} transaction attempts") from last_error

    def get(self, collection: str, doc_id: str) -> Doc | None:
        _check_collection(collection)
        _check_id(collection, doc_id)
        try:
            row = (
                self._conn()
                .db.execute(
                    "SELECT data FROM docs WHERE tenant = ? AND workspace = ? "
                    "AND collection = ? AND id = ?",
                    (*self._scope, collection, doc_id),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise self._translate(exc, f"get {collection}/{doc_id}") from exc
        return None if row is None else dict(json.loads(row[0]))

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``doc_ids``, by id (one consistent read)."""
        try:
            return _get_many(self._conn().db, self._scope, collection, doc_ids)
        except sqlite3.Error as exc:
            raise self._translate(exc, f"get_many in {collection}") from exc

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        sql = _select_sql(self._scope, collection, where, order_by, limit)
        try:
            return _run_query(self._conn().db, sql)
        except sqlite3.Error as exc:
            raise self._translate(exc, f"query on {collection}") from exc

    def query_plan(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """SQLite's plan for :meth:`query` with these arguments, one step per line.

        For checking that a query the control plane runs often is served by an index.
        """
        sql = _select_sql(self._scope, collection, where, order_by, limit)
        rows = self._conn().db.execute("EXPLAIN QUERY PLAN " + sql.text, sql.params)
        return [str(row[3]) for row in rows]


# Thread-local connection holders inherited across a fork (see SqliteStateStore._conn).
_inherited_after_fork: list[tuple[threading.local, weakref.WeakSet[_Connection]]] = []
