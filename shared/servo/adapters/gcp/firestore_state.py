"""The state store on Firestore (native mode), for one tenant and workspace.

Document ``collection/doc_id`` of a store bound to ``(tenant, workspace)`` lives at
``tenants/{tenant}/workspaces/{workspace}/{collection}/{doc_id}`` in the database of the
client the store is given (the default database or a named one).

Transactions
    ``transact`` runs the function against a :class:`FirestoreTxn`. A Firestore transaction is
    begun lazily, at the first read; a function that only writes is committed as one atomic
    batch with the same preconditions (``create`` needs the document absent, ``update``
    present), which costs one round trip and takes no read locks. Writes are buffered and
    sent at commit. A read after a write raises ``ServoError`` at once, as the embedded store
    does (Firestore would refuse it too, later). An attempt that Firestore aborts because of
    contention is run again, up to ``max_attempts`` times, then ``TransientError`` is raised.

    Firestore's server libraries lock pessimistically: a transaction's reads lock the
    documents until it commits, and two transactions that read one document and then write it
    wait for each other. Production Firestore resolves that quickly by aborting one; the
    emulator only after a 2 s lock timeout. So that transactions of one process never end up
    in that embrace, stores sharing a Firestore client also take an in-process lock on every
    document a transaction reads or writes, before Firestore sees the request. The locks
    follow the *wait-die* rule: an older transaction waits for a younger one, a younger one
    gives up at once, releases what it holds and starts again, keeping its age so that it
    cannot starve. Transactions of one process on one document therefore queue instead of
    deadlocking; contention between processes is still resolved by Firestore.

Documents
    Values are JSON-compatible: str, int (64-bit), float, bool, None, lists and dicts. Two
    things Firestore cannot hold directly are encoded, invisibly to callers: a list directly
    inside a list is stored as the map ``{"~list": [...]}``, and a map key that Firestore
    reserves (empty, or ``__like_this__``) or that starts with ``~`` is stored with a ``~``
    prefix.

Queries
    Filters run in Firestore with its semantics (a filter only matches values of its
    operand's type, documents lacking the field never match, ``!=`` skips nulls). When
    Firestore's own order is the one the port promises (by ``order_by`` then by id), the limit
    is applied by Firestore too; otherwise (an inequality filter on another field, an ``in``
    list that must be split) the matching documents are sorted and cut here. An ``in`` list
    holding ``None`` is run as a separate ``== None`` query, because Firestore's ``in`` never
    matches null. Production Firestore needs composite indexes for queries that combine an
    equality with a range or an order on another field; the emulator does not.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from google.api_core import exceptions as google_errors
from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from servo.adapters.gcp.costs import (
    FIRESTORE_DELETE,
    FIRESTORE_READ,
    FIRESTORE_WRITE,
    OperationCounter,
)
from servo.adapters.gcp.errors import RETRYABLE, translate
from servo.core.errors import AlreadyExists, NotFound, ServoError, TransientError
from servo.ports import Doc, StateTxn, Where

logger = logging.getLogger(__name__)

T = TypeVar("T")

LIST_KEY = "~list"
"""The key of the map that stands for a list nested directly in a list."""

_ESCAPE = "~"
_RESERVED_KEY = re.compile(r"__.*__\Z", re.DOTALL)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}\Z")
_MAX_ID_BYTES = 1500
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_IN_VALUES = 30  # Firestore's limit on the values of one `in` filter
_MAX_QUERY_VARIANTS = 30
_INEQUALITIES = frozenset({"<", "<=", ">", ">=", "!="})
_OPERATORS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "array_contains"})


# -- encoding --------------------------------------------------------------------------


def escape_key(key: str) -> str:
    """The Firestore field name that stores the map key ``key``."""
    if not key or key.startswith(_ESCAPE) or _RESERVED_KEY.match(key):
        return _ESCAPE + key
    return key


def unescape_key(key: str) -> str:
    """The map key stored under the Firestore field name ``key``."""
    return key[1:] if key.startswith(_ESCAPE) else key


def encode_value(value: Any, where: str, *, in_list: bool = False) -> Any:
    """``value`` as stored in Firestore (see the module docstring); ``where`` names it in errors."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ServoError(
                f"{where} holds the integer {value}, outside Firestore's 64-bit range; store "
                "it as a string"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ServoError(f"{where} holds {value!r}; only finite numbers can be stored")
        return value
    if isinstance(value, (list, tuple)):
        items = [encode_value(item, where, in_list=True) for item in value]
        return {LIST_KEY: items} if in_list else items
    if isinstance(value, Mapping):
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ServoError(f"{where} has a non-string key {key!r}; keys must be strings")
            encoded[escape_key(key)] = encode_value(item, where)
        return encoded
    raise ServoError(
        f"{where} holds a {type(value).__name__}; documents may hold only str, int, float, "
        "bool, None, lists and dicts"
    )


def decode_value(value: Any) -> Any:
    """The JSON value that Firestore's ``value`` stands for (a fresh copy)."""
    if isinstance(value, Mapping):
        if len(value) == 1 and LIST_KEY in value and isinstance(value[LIST_KEY], list):
            return [decode_value(item) for item in value[LIST_KEY]]
        return {unescape_key(key): decode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    return value


def encode_document(collection: str, doc_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The Firestore fields of document ``data``."""
    if not isinstance(data, Mapping):
        raise ServoError(
            f"document {collection}/{doc_id} must be a dict, got {type(data).__name__}"
        )
    encoded = encode_value(data, f"document {collection}/{doc_id}")
    assert isinstance(encoded, dict)
    return encoded


def decode_document(data: Mapping[str, Any] | None) -> Doc:
    """The document that the Firestore fields ``data`` stand for."""
    decoded = decode_value(dict(data or {}))
    assert isinstance(decoded, dict)
    return decoded


# -- validation ------------------------------------------------------------------------


def check_collection(collection: str) -> None:
    """Raise ``ServoError`` unless ``collection`` is a valid collection name."""
    if not isinstance(collection, str) or not _COLLECTION.match(collection):
        raise ServoError(
            f"invalid collection name {collection!r}: use a letter or underscore followed by "
            "up to 99 letters, digits, '_' or '-'"
        )


def check_id(collection: str, doc_id: str) -> None:
    """Raise ``ServoError`` unless ``doc_id`` is a valid document id."""
    if not isinstance(doc_id, str) or not doc_id:
        raise ServoError(f"document id in {collection} must be a non-empty string, got {doc_id!r}")
    if "/" in doc_id or doc_id in (".", "..") or _RESERVED_KEY.match(doc_id):
        raise ServoError(
            f"invalid document id {doc_id!r} in {collection}: ids may not contain '/', be "
            "'.' or '..', or look like __name__ (Firestore reserves these)"
        )
    if len(doc_id.encode("utf-8")) > _MAX_ID_BYTES:
        raise ServoError(
            f"document id in {collection} is longer than {_MAX_ID_BYTES} bytes: "
            f"{doc_id[:40]!r}…; use a shorter id (for example a hash)"
        )


def _check_field(field_name: str) -> None:
    if not isinstance(field_name, str) or not _IDENTIFIER.match(field_name):
        raise ServoError(
            f"cannot query on field {field_name!r}: queries support top-level fields whose "
            "names are identifiers (letters, digits and '_', not starting with a digit)"
        )


def _check_scalar(field_name: str, value: Any) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ServoError(f"query value for {field_name!r} is outside the 64-bit range: {value}")
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise ServoError(
        f"cannot compare field {field_name!r} with {value!r}: query values must be str, int, "
        "bool or None"
    )


def _check_where(condition: Where) -> Where:
    if not isinstance(condition, Where):
        raise ServoError(f"query conditions must be Where objects, got {condition!r}")
    _check_field(condition.field)
    op, value = condition.op, condition.value
    if op not in _OPERATORS:
        raise ServoError(
            f"unknown query operator {op!r} on field {condition.field!r}; use one of "
            "==, !=, <, <=, >, >=, in, array_contains"
        )
    if op == "in":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise ServoError(
                f"the 'in' filter on field {condition.field!r} needs a non-empty list of "
                f"values, got {value!r}"
            )
        for item in value:
            _check_scalar(condition.field, item)
        return condition
    _check_scalar(condition.field, value)
    if value is None and op in ("<", "<=", ">", ">="):
        raise ServoError(
            f"cannot use {op!r} with None on field {condition.field!r}: null only supports "
            "== and !="
        )
    return condition


def _parse_order(order_by: str | None) -> tuple[str | None, bool]:
    if order_by is None:
        return None, False
    if not isinstance(order_by, str):
        raise ServoError(f"order_by must be a field name or '-field', got {order_by!r}")
    descending = order_by.startswith("-")
    name = order_by[1:] if descending else order_by
    _check_field(name)
    return name, descending


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ServoError(f"query limit must be an integer >= 0, got {limit!r}")


def _quoted(name: str) -> str:
    return str(FieldPath(escape_key(name)).to_api_repr())


# Firestore's order across types, for sorting here what Firestore could not sort for us.
def _order_key(value: Any) -> tuple[Any, ...]:
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, (int, float)):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, bytes):
        return (4, value)
    if isinstance(value, list):
        return (8, tuple(_order_key(item) for item in value))
    if isinstance(value, Mapping):
        return (9, tuple((key, _order_key(value[key])) for key in sorted(value)))
    return (7, str(value))


def _array_contains_null(raw: Mapping[str, Any], field_name: str) -> bool:
    values = raw.get(escape_key(field_name))
    return isinstance(values, list) and any(item is None for item in values)


# -- in-process document locks -----------------------------------------------------------


class _Contention(TransientError):
    """A transaction attempt gave way to an older one holding ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"document {path} is in use by another transaction of this process; retrying"
        )
        self.path = path


@dataclass(eq=False)
class _LockOwner:
    priority: int  # lower is older
    held: set[str] = field(default_factory=set)


_ages = itertools.count()


class DocumentLocks:
    """In-process locks on document paths with the wait-die rule (see the module docstring)."""

    def __init__(self, wait_s: float = 10.0) -> None:
        self._cond = threading.Condition()
        self._owners: dict[str, _LockOwner] = {}
        self._wait_s = wait_s

    def acquire(self, owner: _LockOwner, paths: Iterable[str]) -> None:
        """Lock ``paths`` for ``owner``, or raise ``_Contention`` if it must give way."""
        with self._cond:
            for path in sorted(set(paths)):
                deadline = time.monotonic() + self._wait_s
                while True:
                    holder = self._owners.get(path)
                    if holder is None or holder is owner:
                        break
                    remaining = deadline - time.monotonic()
                    if owner.priority > holder.priority or remaining <= 0:
                        raise _Contention(path)
                    self._cond.wait(remaining)
                self._owners[path] = owner
                owner.held.add(path)

    def release_all(self, owner: _LockOwner) -> None:
        """Release every lock ``owner`` holds."""
        with self._cond:
            for path in owner.held:
                if self._owners.get(path) is owner:
                    del self._owners[path]
            owner.held.clear()
            self._cond.notify_all()

    def wait_released(self, path: str) -> None:
        """Wait (boundedly) until nobody holds ``path``."""
        with self._cond:
            self._cond.wait_for(lambda: path not in self._owners, self._wait_s)


_locks_by_client: weakref.WeakKeyDictionary[Any, DocumentLocks] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _locks_for(client: Any) -> DocumentLocks:
    with _locks_guard:
        locks = _locks_by_client.get(client)
        if locks is None:
            locks = _locks_by_client[client] = DocumentLocks()
        return locks


# -- transactions ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Write:
    kind: Literal["create", "set", "update", "delete"]
    ref: Any  # DocumentReference
    label: str  # collection/doc_id
    data: dict[str, Any] | None = None


class FirestoreTxn:
    """The :class:`~servo.ports.StateTxn` handed to a function run by ``transact``."""

    def __init__(self, store: FirestoreStateStore, owner: _LockOwner) -> None:
        self._store = store
        self._owner = owner
        self._transaction: Any = None  # google.cloud.firestore.Transaction once begun
        self._writes: list[_Write] = []
        self._known: dict[str, bool] = {}  # path -> exists, as far as this transaction knows
        self._open = True
        self._doomed: _Contention | None = None

    # -- helpers

    def _check_open(self) -> None:
        if not self._open:
            raise ServoError(
                "this transaction has already finished; use the txn only inside the function "
                "passed to transact()"
            )
        if self._doomed is not None:
            raise self._doomed

    def _before_read(self, what: str) -> None:
        self._check_open()
        if self._writes:
            raise ServoError(
                f"transaction {what} after a write: read every document first, then write "
                "(Firestore transactions require all reads before the first write)"
            )

    def _lock(self, paths: Iterable[str]) -> None:
        try:
            self._store._locks.acquire(self._owner, paths)
        except _Contention as exc:
            self._doomed = exc
            raise

    def _begun(self) -> Any:
        if self._transaction is None:
            transaction = self._store._client.transaction(max_attempts=1)
            # Begun here rather than by firestore.transactional so that a function that never
            # reads needs no transaction at all (see commit()).
            transaction._begin()
            self._transaction = transaction
        return self._transaction

    def _write(
        self,
        kind: Literal["create", "set", "update", "delete"],
        collection: str,
        doc_id: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        ref = self._store._ref(collection, doc_id)
        self._lock([ref.path])
        self._writes.append(_Write(kind, ref, f"{collection}/{doc_id}", data))
        self._known[ref.path] = kind != "delete"

    # -- reads

    def get(self, collection: str, doc_id: str) -> Doc | None:
        self._before_read("get")
        return self.get_many(collection, [doc_id], _what="get").get(doc_id)

    def get_many(
        self, collection: str, doc_ids: Sequence[str], *, _what: str = "get_many"
    ) -> dict[str, Doc]:
        self._before_read(_what)
        check_collection(collection)
        if isinstance(doc_ids, str):
            raise ServoError(f"get_many on {collection} needs a sequence of ids, not one string")
        unique = list(dict.fromkeys(doc_ids))
        refs = [self._store._ref(collection, doc_id) for doc_id in unique]
        if not refs:
            return {}
        self._lock(ref.path for ref in refs)
        snapshots = list(self._begun().get_all(refs))
        self._store.counter.add(FIRESTORE_READ, len(refs))
        found: dict[str, Doc] = {}
        for snapshot in snapshots:
            self._known[snapshot.reference.path] = snapshot.exists
            if snapshot.exists:
                found[snapshot.id] = decode_document(snapshot.to_dict())
        return found

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        self._before_read("query")
        rows = self._store._run_query(collection, where, order_by, limit, transaction=self._begun)
        paths = [self._store._ref(collection, doc_id).path for doc_id, _ in rows]
        self._lock(paths)
        for path in paths:
            self._known[path] = True
        return [(doc_id, decode_document(raw)) for doc_id, raw in rows]

    # -- writes

    def create(self, collection: str, doc_id: str, data: Doc) -> None:
        self._check_open()
        encoded = encode_document(collection, doc_id, data)
        ref = self._store._ref(collection, doc_id)
        if self._known.get(ref.path) is True:
            raise _already_exists([f"{collection}/{doc_id}"])
        self._write("create", collection, doc_id, encoded)

    def set(self, collection: str, doc_id: str, data: Doc) -> None:
        self._check_open()
        self._write("set", collection, doc_id, encode_document(collection, doc_id, data))

    def update(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        self._check_open()
        if not isinstance(fields, Mapping):
            raise ServoError(
                f"update of document {collection}/{doc_id} needs a dict of fields, got "
                f"{type(fields).__name__}"
            )
        encoded = encode_document(collection, doc_id, fields)
        ref = self._store._ref(collection, doc_id)
        known = self._known.get(ref.path)
        if known is None and not encoded and not self._writes:
            # Firestore cannot express an update of no fields; a read checks the existence.
            self.get(collection, doc_id)
            known = self._known.get(ref.path)
        if known is False:
            raise _not_found([f"{collection}/{doc_id}"])
        if not encoded:
            if known is None:
                raise ServoError(
                    f"update of document {collection}/{doc_id} names no fields and comes after "
                    "a write, so its existence cannot be checked; read the document first or "
                    "pass at least one field"
                )
            return
        self._write("update", collection, doc_id, encoded)

    def delete(self, collection: str, doc_id: str) -> None:
        self._check_open()
        self._write("delete", collection, doc_id)

    # -- ending

    def commit(self) -> None:
        """Send the buffered writes atomically (the end of a successful attempt)."""
        self._check_open()
        transaction = self._transaction
        if not self._writes:
            if transaction is not None:
                transaction._commit()  # releases the read locks
            return
        target = transaction if transaction is not None else self._store._client.batch()
        for write in self._writes:
            if write.kind == "create":
                target.create(write.ref, write.data)
            elif write.kind == "set":
                target.set(write.ref, write.data)
            elif write.kind == "update":
                assert write.data is not None
                target.update(write.ref, {_field_path(k): v for k, v in write.data.items()})
            else:
                target.delete(write.ref)
        if transaction is not None:
            transaction._commit()
        else:
            target.commit()

    def close(self) -> None:
        """End the attempt; roll back a begun transaction that did not commit."""
        self._open = False
        transaction = self._transaction
        if transaction is not None and transaction.in_progress:
            try:
                transaction._rollback()
            except google_errors.GoogleAPICallError as exc:
                logger.debug("rollback of an abandoned transaction failed: %s", exc)

    @property
    def writes(self) -> Sequence[_Write]:
        return tuple(self._writes)


def _field_path(key: str) -> str:
    return str(FieldPath(key).to_api_repr())


def _already_exists(labels: Sequence[str]) -> AlreadyExists:
    if len(labels) == 1:
        return AlreadyExists(
            f"document {labels[0]} already exists; use set() to overwrite it or update() to "
            "change some fields"
        )
    return AlreadyExists(
        f"one of the documents this transaction creates already exists ({', '.join(labels)}); "
        "use set() to overwrite, or read them first"
    )


def _not_found(labels: Sequence[str]) -> NotFound:
    if len(labels) == 1:
        return NotFound(
            f"cannot update document {labels[0]}: it does not exist; use create() or set() to "
            "write a new document"
        )
    return NotFound(
        f"one of the documents this transaction updates does not exist ({', '.join(labels)}); "
        "use create() or set() to write new documents"
    )


def _named(writes: Sequence[_Write], kind: str, message: str) -> list[str]:
    candidates = [w for w in writes if w.kind == kind]
    mentioned = [w for w in candidates if w.ref.path in message]
    return [w.label for w in (mentioned or candidates)]


# -- the store -------------------------------------------------------------------------


class FirestoreStateStore:
    """A :class:`~servo.ports.StateStore` in Firestore; see the module docstring.

    ``client`` is a ``google.cloud.firestore.Client`` (its database is the store's database);
    it is safe to share the store between threads. ``counter`` receives the billable reads,
    writes and deletes.
    """

    def __init__(
        self,
        client: Any,
        tenant: str,
        workspace: str,
        *,
        counter: OperationCounter | None = None,
    ) -> None:
        for label, value in (("tenant", tenant), ("workspace", workspace)):
            if not isinstance(value, str) or not value:
                raise ServoError(f"state store {label} must be a non-empty string, got {value!r}")
            check_id(label, value)
        self._client = client
        self.tenant = tenant
        self.workspace = workspace
        self.counter = counter if counter is not None else OperationCounter()
        self._root = ("tenants", tenant, "workspaces", workspace)
        self._locks = _locks_for(client)
        self._local = threading.local()

    @property
    def client(self) -> Any:
        """The Firestore client."""
        return self._client

    def _collection(self, collection: str) -> Any:
        check_collection(collection)
        return self._client.collection(*self._root, collection)

    def _ref(self, collection: str, doc_id: str) -> Any:
        check_collection(collection)
        check_id(collection, doc_id)
        return self._client.collection(*self._root, collection).document(doc_id)

    # -- transactions

    def transact(self, fn: Callable[[StateTxn], T], *, max_attempts: int = 8) -> T:
        """Run ``fn`` in a Firestore transaction; see :class:`~servo.ports.StateStore`.

        Raises ``TransientError`` when every one of ``max_attempts`` attempts was aborted by
        contention, or when the commit failed in a way that leaves its outcome unknown.
        """
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ServoError(f"max_attempts must be at least 1, got {max_attempts!r}")
        if getattr(self._local, "active", False):
            raise ServoError(
                "transact() was called inside another transaction of the same store; pass the "
                "outer txn down instead of starting a nested transaction"
            )
        owner = _LockOwner(priority=next(_ages))
        last_error: BaseException | None = None
        self._local.active = True
        try:
            for attempt in range(max_attempts):
                txn = FirestoreTxn(self, owner)
                committing = False
                gave_way_to: str | None = None
                try:
                    result = fn(txn)
                    committing = True
                    txn.commit()
                    self._count_writes(txn.writes)
                    return result
                except _Contention as exc:
                    last_error, gave_way_to = exc, exc.path
                except google_errors.Aborted as exc:
                    last_error = exc  # contention: nothing was written
                except google_errors.AlreadyExists as exc:
                    raise _already_exists(_named(txn.writes, "create", str(exc))) from exc
                except google_errors.NotFound as exc:
                    if committing:
                        raise _not_found(_named(txn.writes, "update", str(exc))) from exc
                    raise translate(exc, "a state store read") from exc
                except RETRYABLE as exc:
                    if committing:
                        raise TransientError(
                            f"committing a transaction on {self._describe()} failed and its "
                            f"outcome is unknown ({exc}); read the state again before retrying"
                        ) from exc
                    last_error = exc
                except google_errors.GoogleAPICallError as exc:
                    raise translate(exc, f"a transaction on {self._describe()}") from exc
                finally:
                    txn.close()
                    self._locks.release_all(owner)
                if attempt + 1 == max_attempts:
                    break
                if gave_way_to is not None:
                    self._locks.wait_released(gave_way_to)
                else:
                    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        finally:
            self._local.active = False
        raise TransientError(
            f"a transaction on {self._describe()} was aborted by contention {max_attempts} "
            f"times (last: {last_error}); retry later, or make fewer writers share a document"
        ) from last_error

    def _count_writes(self, writes: Sequence[_Write]) -> None:
        deletes = sum(1 for w in writes if w.kind == "delete")
        self.counter.add(FIRESTORE_DELETE, deletes)
        self.counter.add(FIRESTORE_WRITE, len(writes) - deletes)

    def _describe(self) -> str:
        return f"tenants/{self.tenant}/workspaces/{self.workspace}"

    # -- reads outside transactions

    def get(self, collection: str, doc_id: str) -> Doc | None:
        ref = self._ref(collection, doc_id)
        try:
            snapshot = ref.get()
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"reading document {collection}/{doc_id}") from exc
        finally:
            self.counter.add(FIRESTORE_READ)
        return decode_document(snapshot.to_dict()) if snapshot.exists else None

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``doc_ids``, by id (one consistent read)."""
        if isinstance(doc_ids, str):
            raise ServoError(f"get_many on {collection} needs a sequence of ids, not one string")
        unique = list(dict.fromkeys(doc_ids))
        refs = [self._ref(collection, doc_id) for doc_id in unique]
        if not refs:
            return {}
        try:
            snapshots = list(self._client.get_all(refs))
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"reading documents of {collection}") from exc
        finally:
            self.counter.add(FIRESTORE_READ, len(refs))
        return {s.id: decode_document(s.to_dict()) for s in snapshots if s.exists}

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        rows = self._run_query(collection, where, order_by, limit, transaction=None)
        return [(doc_id, decode_document(raw)) for doc_id, raw in rows]

    def _run_query(
        self,
        collection: str,
        where: Sequence[Where],
        order_by: str | None,
        limit: int | None,
        *,
        transaction: Callable[[], Any] | None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Matching ``(id, raw Firestore fields)`` pairs in the port's order."""
        collection_ref = self._collection(collection)
        if isinstance(where, Where):
            where = [where]
        conditions = [_check_where(w) for w in where]
        order_field, descending = _parse_order(order_by)
        _check_limit(limit)

        # Each variant is one Firestore query; together they match what `where` matches.
        variants: list[list[tuple[str, str, Any]]] = [[]]
        local_filters: list[str] = []  # fields filtered here with array_contains None
        for condition in conditions:
            if condition.op == "in":
                values = _distinct(condition.value)
                plain = [v for v in values if v is not None]
                alternatives: list[tuple[str, str, Any]] = [
                    (condition.field, "in", plain[i : i + _MAX_IN_VALUES])
                    for i in range(0, len(plain), _MAX_IN_VALUES)
                ]
                if len(plain) != len(values):
                    alternatives.append((condition.field, "==", None))
                variants = [[*v, alt] for v in variants for alt in alternatives]
            elif condition.op == "array_contains" and condition.value is None:
                local_filters.append(condition.field)
            else:
                for variant in variants:
                    variant.append((condition.field, condition.op, condition.value))
        if len(variants) > _MAX_QUERY_VARIANTS:
            raise ServoError(
                f"query on {collection} would need {len(variants)} Firestore queries (long "
                "'in' lists multiply); use fewer 'in' values"
            )
        inequality_fields = {f for f, op, _ in variants[0] if op in _INEQUALITIES}
        firestore_orders = (
            len(variants) == 1
            and not local_filters
            and (not inequality_fields or inequality_fields == {order_field})
        )
        if limit == 0:
            return []

        found: dict[str, dict[str, Any]] = {}
        for variant in variants:
            query = collection_ref
            for name, op, value in variant:
                query = query.where(filter=FieldFilter(_quoted(name), op, value))
            if order_field is not None:
                direction = firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING
                query = query.order_by(_quoted(order_field), direction=direction)
            if firestore_orders and limit is not None:
                query = query.limit(limit)
            kwargs = {"transaction": transaction()} if transaction is not None else {}
            snapshots: list[Any] = []
            try:
                snapshots = list(query.stream(**kwargs))
            except google_errors.GoogleAPICallError as exc:
                if transaction is not None:
                    raise  # transact() decides whether to retry
                raise translate(exc, f"query on {collection}") from exc
            finally:
                self.counter.add(FIRESTORE_READ, max(1, len(snapshots)))
            for snapshot in snapshots:
                found[snapshot.id] = snapshot.to_dict() or {}

        rows = [
            (doc_id, raw)
            for doc_id, raw in found.items()
            if all(_array_contains_null(raw, name) for name in local_filters)
        ]
        if firestore_orders:
            return rows  # already in order: dicts keep the order they were filled in
        if order_field is None:
            rows.sort(key=lambda row: row[0])
        else:
            stored = escape_key(order_field)
            rows.sort(key=lambda row: (_order_key(row[1][stored]), row[0]), reverse=descending)
        return rows if limit is None else rows[:limit]


def _distinct(values: Iterable[Any]) -> list[Any]:
    """``values`` without repeats; True and 1 are different values to Firestore."""
    seen: set[tuple[bool, Any]] = set()
    distinct = []
    for value in values:
        key = (isinstance(value, bool), value)
        if key not in seen:
            seen.add(key)
            distinct.append(value)
    return distinct


__all__ = ["DocumentLocks", "FirestoreStateStore", "FirestoreTxn"]
