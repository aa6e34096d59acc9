"""How asset values are written to and read from Blobs.

A task *stages* its output at the path its envelope names (a per-attempt path). Staging is not
publishing: the control plane *commits* a staged output only after the attempt has succeeded
(and its blocking checks passed), and the input paths of a downstream envelope only ever point
at committed outputs. So an IO manager never needs to guard against readers seeing a partial or
failed attempt's value; it only has to write the whole object at ``path`` and read it back.
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol, runtime_checkable

from servo.core.errors import ServoError
from servo.ports import Blobs
from servo.worker.envelope import OutputRef

PICKLE_PROTOCOL = 5


class SerializationError(ServoError):
    """An asset's value cannot be serialized by its IO manager (a problem in user code)."""


@runtime_checkable
class IOManager(Protocol):
    """Stores asset values: ``stage`` writes a task's output, ``load`` reads a committed one.

    ``load`` is only ever given paths of *committed* outputs (the control plane commits a
    staged output after its attempt succeeded), so an implementation needs no protection
    against reading a failed or partial attempt.

    Give an asset its own with ``@asset(io_manager="name")`` and
    ``Definitions(resources={"name": MyIOManager(...)})``.
    """

    def load(self, path: str) -> Any:
        """The value stored at ``path`` (a committed output of an upstream task)."""
        ...

    def stage(self, path: str, value: Any) -> OutputRef:
        """Write ``value`` at ``path`` and describe what was written."""
        ...


class PickleIOManager:
    """The default IO manager: pickles values (protocol 5) into Blobs.

    ``None`` is a value like any other and is staged too, so a downstream asset reading it
    receives ``None``.
    """

    def __init__(self, blobs: Blobs) -> None:
        self._blobs = blobs

    def load(self, path: str) -> Any:
        return pickle.loads(self._blobs.get(path))

    def stage(self, path: str, value: Any) -> OutputRef:
        try:
            data = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"the value ({type(value).__name__}) cannot be pickled: {exc}; return a "
                "picklable value (plain data, dataframes, dataclasses defined at module level) "
                "or give the asset an io_manager that can store it"
            ) from exc
        self._blobs.put(path, data)
        return OutputRef(
            path=path,
            size=len(data),
            metadata={"format": "pickle", "type": type(value).__qualname__},
        )
