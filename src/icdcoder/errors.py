"""Errors that point at the exact place in the user's input that is wrong."""

from __future__ import annotations

from pathlib import Path


class IcdcoderError(Exception):
    """Base of every error icdcoder raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(IcdcoderError, ValueError):
    """Settings that cannot work together (e.g. a label-space rule after translating versions)."""


class DataError(IcdcoderError):
    """Bad input data: names the file, the line (1-based) and the field when they are known."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.message = message
        where = ""
        if self.path:
            where = self.path + (f":{line}" if line is not None else "")
        if field:
            where += (", " if where else "") + f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)
