"""One error type for bad user input: the CLI prints it as one line and exits with code 2."""

from pathlib import Path

import pydantic
import yaml


class SpecError(ValueError):
    """Invalid user input; the message names the field and the allowed values."""


def first_error(exc: pydantic.ValidationError, prefix: str = "", as_flags: bool = False) -> SpecError:
    """Turn pydantic's multi-line report into one line naming the first bad field (as a CLI flag if asked)."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] != "value_error" and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    field = ".".join(str(p) for p in err["loc"])  # empty for cross-field checks, whose message names the fields
    if as_flags and field:
        field = "--" + field.replace("_", "-")
    return SpecError(f"{prefix}{field}: {msg}" if field else f"{prefix}{msg}")


def read_document(path: str | Path, what: str) -> object:
    """A YAML (or JSON, its subset) file's content; an unreadable or malformed file is one line naming it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read {what}: {' '.join(str(exc).split())}") from None
