"""User-facing errors.

Anything caused by the user's input (a config, a data file, a path) raises :class:`ForgetlessError`
or a subclass. The CLI catches these, prints the message without a traceback and exits with code 2;
any other exception is a bug in forgetless and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class ForgetlessError(Exception):
    """An error in the user's input, reported without a traceback (exit code 2)."""

    exit_code = 2


class InputError(ForgetlessError):
    """Bad input at a known place: file, optional line and optional field.

    ``str(err)`` reads like a compiler message: ``data/train.jsonl:12: field 'text': must be a string``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"field '{self.field}': " if self.field else ""
        return f"{where}{field}{self.message}"


class ConfigError(ForgetlessError):
    """One or more problems in a YAML config; each line names the key path (and YAML line if known)."""

    def __init__(self, problems: list[str], *, file: str | Path | None = None) -> None:
        self.problems = problems
        self.file = str(file) if file is not None else None
        head = f"invalid config {self.file}" if self.file else "invalid config"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))
