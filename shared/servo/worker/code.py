"""Deployed code: fetching a code version's bundle from Blobs, unpacking it, importing it.

A deployment stores two objects per code version:

* ``deployments/<code_version>/bundle.zip``: the project's source files, paths relative to
  the project root (see :func:`servo.project.build_bundle`);
* ``deployments/<code_version>/project.json``: ``{"module": "pkg.defs" | null,
  "file": "relative/path.py" | null, "name": "..."}``.

A Python process can hold only one version of a user module (``sys.modules`` is keyed by module
name), so a :class:`CodeCache` keeps one code version loaded at a time, and the worker pool
dedicates each worker process to one code version.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from servo.core.errors import ServoError
from servo.ports import Blobs
from servo.project import ProjectRef, load_project
from servo.sdk.definitions import Definitions

_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class CodeLoadError(ServoError):
    """A code version cannot be fetched, unpacked or imported."""


def bundle_path(code_version: str) -> str:
    """The Blobs path of a code version's zipped sources."""
    return f"deployments/{code_version}/bundle.zip"


def project_path(code_version: str) -> str:
    """The Blobs path of a code version's ``project.json``."""
    return f"deployments/{code_version}/project.json"


class CodeCache:
    """Unpacks code versions under ``cache_dir`` and loads their :class:`Definitions`.

    Each version is extracted once into ``cache_dir/<code_version>/`` (into a temporary
    directory first, then renamed, so a concurrent worker never sees a half-written tree).
    Loading a second version unloads the first: its modules leave ``sys.modules`` and its
    directory leaves ``sys.path``.
    """

    def __init__(self, blobs: Blobs, cache_dir: Path) -> None:
        self._blobs = blobs
        self._cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._loaded: tuple[str, Path, Definitions] | None = None

    def definitions(self, code_version: str) -> Definitions:
        """The definitions of ``code_version``, extracting and importing it if needed."""
        with self._lock:
            if self._loaded is not None and self._loaded[0] == code_version:
                return self._loaded[2]
            if not isinstance(code_version, str) or not _VERSION.match(code_version):
                raise CodeLoadError(
                    f"code version {code_version!r} is not valid: use letters, digits, '_', "
                    "'.' and '-' (as produced by `servo deploy`)"
                )
            root = self.extract(code_version)
            ref = self._project_ref(code_version, root)
            if self._loaded is not None:
                _unload(self._loaded[1])
                self._loaded = None
            try:
                defs = load_project(ref).defs
            except Exception as exc:
                _unload(root)
                raise CodeLoadError(
                    f"importing code version {code_version} ({ref.module or ref.file}) "
                    f"failed: {exc}"
                ) from exc
            self._loaded = (code_version, root, defs)
            return defs

    def extract(self, code_version: str) -> Path:
        """The directory holding ``code_version``'s sources (extracted on first use)."""
        target = self._cache_dir / code_version
        if target.is_dir():
            return target
        try:
            data = self._blobs.get(bundle_path(code_version))
        except Exception as exc:
            raise CodeLoadError(
                f"the bundle of code version {code_version} cannot be read from "
                f"{bundle_path(code_version)}: {exc}; deploy the project again"
            ) from exc
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{code_version}-", dir=self._cache_dir))
        try:
            _unzip(data, temp, code_version)
            try:
                os.rename(temp, target)
            except OSError:
                # Another process extracted the same version first; its copy is identical.
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return target

    def _project_ref(self, code_version: str, root: Path) -> ProjectRef:
        try:
            raw = self._blobs.get(project_path(code_version))
            info: Any = json.loads(raw)
        except Exception as exc:
            raise CodeLoadError(
                f"the project description of code version {code_version} cannot be read from "
                f"{project_path(code_version)}: {exc}; deploy the project again"
            ) from exc
        if not isinstance(info, dict):
            raise CodeLoadError(f"{project_path(code_version)} must hold a JSON object")
        module = info.get("module")
        file = info.get("file")
        if not module and not file:
            raise CodeLoadError(
                f"{project_path(code_version)} names neither a module nor a file to load"
            )
        return ProjectRef(
            root=root,
            module=module or None,
            file=(root / file) if file and not module else None,
            name=str(info.get("name") or "project"),
        )


def _unzip(data: bytes, into: Path, code_version: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise CodeLoadError(
                        f"the bundle of code version {code_version} holds an unsafe path "
                        f"{info.filename!r}"
                    )
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise CodeLoadError(
            f"the bundle of code version {code_version} is not a zip: {exc}"
        ) from exc


def _unload(root: Path) -> None:
    """Forget the modules imported from ``root`` and take it off ``sys.path``."""
    prefix = str(root) + os.sep
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if isinstance(origin, str) and origin.startswith(prefix):
            del sys.modules[name]
    for entry in (str(root / "src"), str(root)):
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)
    importlib.invalidate_caches()
