"""Where the CLI finds its project and backend, and how it deploys implicitly."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servo.control.deploy import DeployResult, current_code_version, deploy
from servo.core.manifest import Manifest
from servo.ports import Ports
from servo.project import (
    ProjectError,
    ProjectRef,
    build_bundle,
    code_version_of,
    find_project,
    load_and_build,
    project_settings,
)


@dataclass
class Workspace:
    """An open backend, and the project it belongs to (when there is one)."""

    home: Path
    ports: Ports
    project: ProjectRef | None


def servo_home(project: ProjectRef | None) -> Path:
    env = os.environ.get("SERVO_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if project is not None:
        return project.root / ".servo"
    return Path.cwd() / ".servo"


def locate(
    module: str | None = None, file: Path | None = None, required: bool = True
) -> ProjectRef | None:
    try:
        return find_project(module=module, file=file)
    except ProjectError:
        if required:
            raise
        return None


def settings_for(project: ProjectRef | None) -> dict[str, Any]:
    """Control-plane settings: ``[tool.servo.settings]`` of the project, then SERVO_* variables."""
    out: dict[str, Any] = {}
    if project is not None:
        table = project_settings(project).get("settings", {})
        if isinstance(table, dict):
            out.update(table)
    for key in (
        "heartbeat_interval_ms",
        "heartbeat_timeout_ms",
        "dispatch_timeout_ms",
        "cancel_grace_ms",
    ):
        env = os.environ.get(f"SERVO_{key.upper()}")
        if env:
            out[key] = int(env)
    return out


def open_workspace(project: ProjectRef | None) -> Workspace:
    """Open the backend ``SERVO_BACKEND`` names: ``embedded`` (the default, under the
    project's ``.servo``) or ``gcp`` (Firestore, GCS, Cloud Tasks and Pub/Sub as the
    ``SERVO_*`` variables of :mod:`servo.cloud` describe, on the emulators when their
    variables are set)."""
    backend = os.environ.get("SERVO_BACKEND", "embedded")
    home = servo_home(project)
    if backend == "embedded":
        from servo.adapters.embedded import open_embedded

        ports = open_embedded(home)
    elif backend == "gcp":
        from servo.cloud import open_from_env

        ports = open_from_env()
    else:
        raise ProjectError(f"SERVO_BACKEND={backend!r} is not known; use 'embedded' or 'gcp'")
    ports.settings = {**ports.settings, **settings_for(project)}
    return Workspace(home=home, ports=ports, project=project)


def project_record(ref: ProjectRef) -> dict[str, Any]:
    return {
        "module": ref.module,
        "file": ref.file.relative_to(ref.root).as_posix() if ref.file else None,
        "name": ref.name,
    }


def deploy_project(ws: Workspace, actor: str) -> tuple[DeployResult, Manifest]:
    """Validate, bundle and deploy the workspace's project."""
    assert ws.project is not None
    _, manifest = load_and_build(ws.project)
    bundle = build_bundle(ws.project.root)
    result = deploy(ws.ports, manifest, bundle, project_record(ws.project), actor=actor)
    return result, manifest


def ensure_deployed(ws: Workspace, actor: str) -> str:
    """Deploy the project's current code if it is not the current deployment; returns the
    code version runs will use (what a `dagster asset materialize` user expects)."""
    if ws.project is None:
        cv = current_code_version(ws.ports)
        if cv is None:
            raise ProjectError("no project here and nothing deployed; run inside a Servo project")
        return cv
    cv = code_version_of(ws.project.root)
    if current_code_version(ws.ports) == cv:
        return cv
    result, _ = deploy_project(ws, actor)
    return result.code_version


def actor_name() -> str:
    user = (
        os.environ.get("SERVO_ACTOR")
        or os.environ.get("USER")
        or os.environ.get("USERNAME")
        or "unknown"
    )
    return f"user:{user}"


def dev_server_address(home: Path) -> str | None:
    """The address of a `servo dev` running on this home, if one is alive."""
    info = home / "dev.json"
    try:
        data = json.loads(info.read_text())
        pid = int(data["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(data.get("address"))
