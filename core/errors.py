"""Exceptions that carry a user-facing message; the CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class ModaloomError(Exception):
    """Base class of every error whose message is meant for the user."""


class UnknownComponentError(ModaloomError, KeyError):
    """A spec or call names a component that no plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        names = sorted(available)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(names) if names else "(none registered)"
        super().__init__(f"Unknown {kind} {name!r}.{hint} Available: {listing}.")
        self.kind, self.name, self.close_matches = kind, name, close

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateComponentError(ModaloomError):
    """Two plugins registered the same (kind, name)."""


class PluginImportError(ModaloomError):
    """A plugin named by an entry point or explicitly could not be imported."""


class SpecError(ModaloomError):
    """A spec failed to validate; `problems` holds (path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "spec") -> None:
        self.problems = problems
        lines = [
            f"{source} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
        ]
        lines += [f"  {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class SpecProblems(ValueError):
    """Raised by a spec validator for problems located below the model it validates.

    `load_spec` appends each relative path to the model's own (``config.patch_size`` of
    ``model.components.vision``), so every problem reads as one located line.

    Args:
        problems: (path relative to the validated model, message) pairs; ``""`` is the model.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(f"{path}: {message}" if path else message for path, message in problems)
        )


class MediaDecodeError(ModaloomError):
    """A sample's media could not be decoded; the data layer skips and counts it."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"cannot decode sample {key!r}: {cause}")
        self.key, self.cause = key, cause


@contextmanager
def decoding(key: str) -> Iterator[None]:
    """Turn any failure raised while decoding one sample into `MediaDecodeError`.

    The cause keeps its type and message (``cannot decode sample 'k': DecompressionBombError:
    Image size ...``) and is chained. `MemoryError` and what is not an `Exception`
    (``KeyboardInterrupt``, ``SystemExit``) pass through: they concern the process, not the
    sample.

    Args:
        key: the sample key used in error messages.
    """
    try:
        yield
    except (MediaDecodeError, MemoryError):
        raise
    except Exception as exc:
        raise MediaDecodeError(key, f"{type(exc).__name__}: {exc}") from exc


class CheckpointError(ModaloomError):
    """A checkpoint is missing, incomplete or does not match the model."""


class DataError(ModaloomError):
    """A data source is unreachable, empty or misconfigured."""


class RunDirectoryError(ModaloomError):
    """A run directory is in use by another process, or holds a run this call would overwrite."""


class RemoteCodeError(ModaloomError):
    """A model or tokenizer directory asks to run its own code (``auto_map``); never allowed."""


class ExportError(ModaloomError):
    """A component or run cannot be written in the layout asked for (``modaloom export``)."""
