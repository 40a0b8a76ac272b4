"""Typed errors. The CLI turns them into one clear line and exit code 2."""

from __future__ import annotations


class Pos2DistillError(Exception):
    """Base class for every error a user can fix by changing input, flags or config."""


class DataError(Pos2DistillError):
    """A data file is malformed: names the file, the 1-based line and the field when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)


class ConfigError(Pos2DistillError):
    """A flag or config value is invalid: names the flag or key."""


class TrainingError(Pos2DistillError):
    """Training cannot go on (a non-finite loss or gradient): names the step and the last good
    checkpoint, which stays on disk."""


class OutputError(Pos2DistillError):
    """An output cannot be written (no space left, no permission, a read-only or too small
    filesystem): names the file and the cause. Nothing half-written is left under its name."""


class BusyError(Pos2DistillError):
    """Another run is writing the same output: names its owner."""
