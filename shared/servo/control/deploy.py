"""deploy: register a code version (manifest + code bundle) and make it current."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from servo.control.common import DEPLOYMENTS, WORKSPACE
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core import events as ev
from servo.core.errors import AlreadyExists, InvalidRequest, NotFound
from servo.core.manifest import Manifest
from servo.ports import Ports

CURRENT = "current"


def bundle_path(code_version: str) -> str:
    return f"deployments/{code_version}/bundle.zip"


def manifest_path(code_version: str) -> str:
    return f"deployments/{code_version}/manifest.json"


def project_path(code_version: str) -> str:
    return f"deployments/{code_version}/project.json"


@dataclass(frozen=True)
class DeployResult:
    code_version: str
    manifest_id: str
    created: bool  # False when this code version was already deployed


def deploy(
    ports: Ports,
    manifest: Manifest,
    bundle: bytes,
    project: dict[str, Any],
    *,
    actor: str = "system",
    make_current: bool = True,
) -> DeployResult:
    """Store the bundle and manifest (create-only) and register the deployment.

    Idempotent: deploying the same code version again changes nothing but the current pointer.
    """
    cv = manifest.code_version
    if not cv:
        raise InvalidRequest("a deployment needs a code_version")
    for path, data in (
        (bundle_path(cv), bundle),
        (manifest_path(cv), manifest.canonical().encode("utf-8")),
        (project_path(cv), json.dumps(project, sort_keys=True).encode("utf-8")),
    ):
        # Content-addressed: an existing object already holds the same content.
        with contextlib.suppress(AlreadyExists):
            ports.blobs.put(path, data, if_generation=0)
    ports.crash("deploy.after_blobs")

    def body(uow: UnitOfWork) -> bool:
        existing = uow.get(DEPLOYMENTS, cv)
        current = uow.get(WORKSPACE, CURRENT)
        created = existing is None
        if created:
            uow.create(
                DEPLOYMENTS,
                cv,
                {
                    "code_version": cv,
                    "manifest_id": manifest.manifest_id,
                    "project": project,
                    "created_ms": uow.now_ms,
                    "actor": actor,
                    "assets": len(manifest.assets),
                },
            )
        if make_current and (current is None or current.get("code_version") != cv):
            uow.set(
                WORKSPACE,
                CURRENT,
                {
                    "code_version": cv,
                    "manifest_id": manifest.manifest_id,
                    "deployed_ms": uow.now_ms,
                },
            )
            uow.emit(
                ev.DEPLOYED,
                data={"code_version": cv, "manifest_id": manifest.manifest_id, "new": created},
            )
        return created

    created, _ = in_uow(ports, Cause(actor=actor, source="servo/deploy"), body)
    return DeployResult(code_version=cv, manifest_id=manifest.manifest_id, created=created)


def current_code_version(ports: Ports) -> str | None:
    doc = ports.state.get(WORKSPACE, CURRENT)
    return str(doc["code_version"]) if doc else None


_MANIFESTS: dict[tuple[str, str], Manifest] = {}
_LOCK = threading.Lock()


def _blobs_identity(ports: Ports) -> str:
    """What identifies a blob store across Ports objects (its root or bucket and prefix)."""
    blobs = ports.blobs
    for attr in ("root", "bucket_name", "bucket"):
        value = getattr(blobs, attr, None)
        if value is not None:
            prefix = getattr(blobs, "prefix", "")
            return f"{type(blobs).__name__}:{getattr(value, 'name', value)}/{prefix}"
    return f"{type(blobs).__name__}:{id(blobs)}"


def load_manifest(ports: Ports, code_version: str) -> Manifest:
    """The manifest of a deployed code version (cached: deployments are immutable)."""
    key = (_blobs_identity(ports), code_version)
    with _LOCK:
        found = _MANIFESTS.get(key)
    if found is not None:
        return found
    try:
        raw = ports.blobs.get(manifest_path(code_version))
    except NotFound:
        raise InvalidRequest(
            f"code version {code_version} is not deployed; run `servo deploy` first"
        ) from None
    manifest = Manifest.from_json_obj(json.loads(raw))
    with _LOCK:
        if len(_MANIFESTS) > 64:
            _MANIFESTS.clear()
        _MANIFESTS[key] = manifest
    return manifest
