"""One policy for every path a command writes (an output file, a folder of outputs, a results store).

- An empty path is refused (it would silently fall back to a default).
- A file that is a folder, or a folder that is a file, is refused.
- Missing parent folders are created; those created for a command that then fails are removed again, so a
  failed command leaves nothing behind (`Outputs`).
- A place that cannot be written (/proc, a read-only folder) is refused before any work is done.
- An output that is one of the command's inputs (`results --db r.sqlite -o r.sqlite`) is refused.
- Files are written atomically (`atomic`): a temporary file beside the target, renamed over it on success,
  so a disk that fills up mid-write leaves the old file (or none), never a truncated one.
"""

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from stream_mla.errors import SpecError, short_path

FILE, FOLDER = "file", "folder"
STORE = "store"  # a file that its writer (the results store) opens itself, with its own read-only message


class Outputs:
    """The output paths of one command; `discard()` removes the folders it created (when the command failed)."""

    def __init__(self) -> None:
        self.created: list[Path] = []

    def prepare(self, value: str | Path | None, flag: str, kind: str = FILE, inputs: dict | None = None) -> Path | None:
        """Check (and make room for) one output path; None (not given) stays None. `inputs`: the command's input
        files by flag, which the output must not overwrite."""
        if value is None:
            return None
        if str(value) == "":
            raise SpecError(f"{flag}: empty path (give a {kind} name, or leave the option out for the default)")
        path = Path(value)
        for input_flag, source in (inputs or {}).items():
            if _same_file(path, source):
                raise SpecError(f"{flag}: {short_path(path)} is the {input_flag} input too (give another file)")
        if kind == FOLDER:
            self._folder(path, flag)
        else:
            self._file(path, flag, probe=kind == FILE)
        return path

    def _file(self, path: Path, flag: str, probe: bool) -> None:
        if path.is_dir():
            raise SpecError(f"{flag}: {short_path(path)} is a folder (give a file name)")
        self._make_folders(path.parent, flag)
        if probe:
            _probe_file(path, flag)

    def _folder(self, path: Path, flag: str) -> None:
        if path.exists() and not path.is_dir():
            raise SpecError(f"{flag}: {short_path(path)} is a file (give a folder)")
        self._make_folders(path, flag)
        if not os.access(path, os.W_OK | os.X_OK):
            raise SpecError(f"{flag}: cannot write in {short_path(path)} (permission denied)")

    def _make_folders(self, folder: Path, flag: str) -> None:
        missing = []
        for p in (folder, *folder.parents):
            if p.is_dir():
                break
            if p.exists():  # a file where a folder should be
                raise SpecError(f"{flag}: {short_path(p)} is a file, not a folder")
            missing.append(p)
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:  # made by someone else meanwhile: fine
                continue
            except OSError as exc:
                raise SpecError(f"{flag}: cannot create folder {short_path(p)} ({exc.strerror or exc})") from None
            self.created.append(p)

    def discard(self) -> None:
        """Remove the folders this command created, deepest first, where they are still empty."""
        for p in reversed(self.created):
            with contextlib.suppress(OSError):
                p.rmdir()
        self.created.clear()


def _same_file(a: Path, b: str | Path | None) -> bool:
    if b is None or str(b) == "":
        return False
    try:
        return Path(a).resolve() == Path(b).resolve() or (Path(b).exists() and Path(a).exists() and a.samefile(b))
    except OSError:
        return False


def _probe_file(path: Path, flag: str) -> None:
    """Open the file for appending (creating it if needed, and removing it again): the one test of writability
    that asks the file system itself (root passes os.access everywhere, /proc refuses at open)."""
    existed = path.exists()
    if existed and not path.is_file():  # /dev/null, /dev/full, a pipe: opening a pipe would block
        if not os.access(path, os.W_OK):
            raise SpecError(f"{flag}: cannot write {short_path(path)} (permission denied)")
        return
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise SpecError(f"{flag}: cannot write {short_path(path)} ({exc.strerror or exc})") from None
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                path.unlink()


def prepare_output(value: str | Path | None, flag: str, kind: str = FILE) -> Path | None:
    """`Outputs().prepare` for a caller that needs no clean-up of created folders."""
    return Outputs().prepare(value, flag, kind)


@contextlib.contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """Yield the path to write `path`'s content to: a temporary file beside it (same suffix, so writers that
    infer the format from it still do), renamed over `path` when the block succeeds and removed when it fails.
    A target that is not a regular file (/dev/null, /dev/full, a pipe) is written directly."""
    path = Path(path)
    if path.exists() and not path.is_file():
        try:
            yield path
        except OSError as exc:
            exc.filename = exc.filename or str(path)
            raise
        return
    tmp = _temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):  # name the user's path in the error
            exc.filename = str(path)
        raise


def _temporary_beside(path: Path) -> Path:
    for i in range(100):
        tmp = path.with_name(f".{path.stem}.{os.getpid()}-{i}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666: the umask applies
            return tmp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary name", str(path))
