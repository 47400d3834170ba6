"""Errors a user can meet, each printed as one line: bad input (exit 2) and faults of the machine (exit 1).

Also the one reader of user YAML/JSON files, strict where PyYAML is lenient in ways that silently mislead.
"""

from pathlib import Path

import pydantic
import yaml

EXIT_FAULT = 1  # the input was fine, the machine was not: disk full, an engine crash, a lost scheduler
EXIT_USAGE = 2  # bad input: the message names the flag or field and the allowed values
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away, e.g. `| head -1` (128 + SIGPIPE)
EXIT_TERMINATED = 143  # `kill` (128 + SIGTERM)

EXCERPT_CHARS = 60  # a quoted user value is cut to this, so an error stays one short line
LINE_CHARS = 300  # and a whole message to this
MAX_DOCUMENT_BYTES = 1 << 20  # platform, sweep and HF config files are a few KB; this bounds /dev/zero & co.


class SpecError(ValueError):
    """Invalid user input; the message names the field and the allowed values."""


class FaultError(RuntimeError):
    """A fault outside the user's input (disk full, an unreachable scheduler): one line, exit code 1."""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """repr(value), cut to `limit` characters: an error quotes what it got without echoing a whole file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_path(path: object, limit: int = 2 * EXCERPT_CHARS) -> str:
    """A path for a message: its tail when it is long (the file name is the informative part)."""
    text = str(path)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def one_line(text: str, limit: int = LINE_CHARS) -> str:
    """Whitespace collapsed to single spaces, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_error(exc: pydantic.ValidationError, prefix: str = "", as_flags: bool = False) -> SpecError:
    """Turn pydantic's multi-line report into one line naming the first bad field (as a CLI flag if asked)."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] != "value_error" and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {excerpt(err['input'])})"
    field = ".".join(str(p)[:EXCERPT_CHARS] for p in err["loc"])  # empty for cross-field checks
    if as_flags and field:
        field = "--" + field.replace("_", "-")
    return SpecError(one_line(f"{prefix}{field}: {msg}" if field else f"{prefix}{msg}"))


def reject_bools(cls, data: object) -> object:
    """A pydantic before-validator for records without boolean fields: a boolean where a number or a name is
    meant, alone or in a list or mapping, is an error (YAML reads `yes`, `on` and `true` as booleans, and pydantic
    would take them as 1)."""
    if isinstance(data, dict):
        for key, value in data.items():
            inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else (value,)
            if any(isinstance(v, bool) for v in inner):
                name = str(key)[:EXCERPT_CHARS]
                raise ValueError(f"{name}: a number or a name, not a boolean (got {excerpt(value)})")
    return data


def each_once(values: list | None) -> list | None:
    """A pydantic after-validator for the values of an axis: a value listed twice is an error (it would be run,
    counted or drawn twice, or dropped without a word)."""
    seen: list = []
    for value in values or ():
        if value in seen:
            raise ValueError(f"{excerpt(value)} is listed twice; list each value once")
        seen.append(value)
    return values


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses two things it would accept silently: a key given twice in one mapping (the
    last value would win without a word) and aliases (`*name`: an alias bomb expands a small file into
    gigabytes, and a user file has no need to share nodes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {excerpt(key)}",
                                                        key_node.start_mark)  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_document(path: str | Path, what: str) -> object:
    """A YAML (or JSON, its subset) file's content; an unreadable, oversized or malformed file is one line
    naming it."""
    path = Path(path)
    where = f"{short_path(path)}: cannot read {what}"
    try:
        if path.is_dir():
            raise SpecError(f"{short_path(path)}: is a folder, not a {what} file")
        with path.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise SpecError(f"{where}: larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
        return yaml.load(data.decode("utf-8"), Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except OSError as exc:
        raise SpecError(f"{where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise SpecError(one_line(f"{where}: {_yaml_problem(exc)}")) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and position, without its multi-line excerpt of the file."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem
