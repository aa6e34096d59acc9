"""Named development sessions: `nox -s lint typecheck tests emulator_tests bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

SOURCES = ["shared", "tests", "functions", "bench", "examples", "emulators", "worker_image"]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev,gcp]")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev,gcp]")
    session.run("pytest", *session.posargs)


@nox.session
def emulator_tests(session: nox.Session) -> None:
    session.install("-e", ".[dev,gcp]")
    session.run("pytest", "-m", "emulators", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    session.install("-e", ".[dev,gcp]")
    session.run("python", "bench/run.py", *session.posargs)
