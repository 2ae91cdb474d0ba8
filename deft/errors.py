"""Errors a user can act on.

Every error DEFT raises on bad input is a :class:`DeftError` that names where the problem is (file, line,
field) in one line, so the CLI can print ``error: <message>`` and exit non-zero without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class DeftError(Exception):
    """Base class: a problem the user can fix, located by file, line and field where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None and not self.message.startswith(self.file):  # a message may open with it
            where.append(Path(self.file).name if len(self.file) > 60 else self.file)
        if self.line is not None:
            where.append(f"line {self.line}")
        prefix = " ".join(where)
        body = self.message
        if self.field is not None and f"'{self.field}'" not in body:
            body = f"field '{self.field}': {body}"
        return f"{prefix}: {body}" if prefix else body


class DataFormatError(DeftError):
    """Input data that cannot be read: missing file, wrong columns, bad values, unknown format."""


class ConfigError(DeftError):
    """An invalid configuration. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str], *, file: str | Path | None = None) -> None:
        self.problems = list(problems)
        message = problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
        super().__init__(message, file=file)


class ArtifactMismatchError(DeftError):
    """A run directory holds outputs made with other inputs or settings (use --overwrite to replace them)."""


class OutputExistsError(DeftError):
    """An output file exists and --overwrite was not given."""


class MissingAssetError(DeftError):
    """A bundled asset (dataset or model package) is not installed; the message says how to install it."""


class BudgetError(DeftError):
    """A selection budget that cannot be met exactly."""


class TrainingDivergedError(DeftError):
    """Fine-tuning produced a non-finite loss: no adapter from that point on can be trusted."""


class ModelLoadError(DeftError):
    """A target model that cannot be loaded, or lacks the modules a score or LoRA needs."""
