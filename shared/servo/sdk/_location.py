"""Where user definitions come from, for messages that point at file:line."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SourceLocation:
    file: str | None
    line: int | None

    def render(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line else self.file


def of_function(fn: Callable[..., Any]) -> SourceLocation:
    """The file and first line of a function (its decorator line when decorated)."""
    try:
        code = fn.__code__
    except AttributeError:
        try:
            return SourceLocation(inspect.getsourcefile(fn), None)
        except TypeError:
            return SourceLocation(None, None)
    return SourceLocation(code.co_filename, code.co_firstlineno)


def of_caller(depth: int = 2) -> SourceLocation:
    """The file:line of the code that called the function calling this one."""
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return SourceLocation(None, None)
    return SourceLocation(frame.f_code.co_filename, frame.f_lineno)
