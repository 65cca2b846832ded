"""What a ``pretrained:`` checkpoint holds and whether a component can start from it.

Used by `modaloom.modalities.hf` and the wrappers around it:

* `checkpoint_location_problem`: a local path must exist, a bare name must already be in the
  Hugging Face cache (nothing is downloaded at run time); the specs check this when they load,
  so ``modaloom validate`` reports it;
* `quiet_transformers`: loads without `transformers`' own load report and progress bars
  (modaloom reports instead);
* `LoadReport` / `refuse_partial_load`: after loading, every weight of the component must come
  from the checkpoint and every checkpoint tensor must be used, except what the wrapper names
  (task heads, poolers, another tower of the same checkpoint; a decoder's new
  cross-attention); otherwise the component is refused with one `SpecError`;
* `preprocessor_config`: the checkpoint's ``preprocessor_config.json`` (pixel mean, std, size).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from huggingface_hub import try_to_load_from_cache
from pydantic import ValidationInfo
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from modaloom.core.errors import SpecError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from modaloom.core.interfaces import PretrainedInput
    from modaloom.core.spec_models import Spec

__all__ = [
    "LoadReport",
    "checkpoint_location_problem",
    "has_tokenizer",
    "load_with_info",
    "preprocessor_config",
    "quiet_transformers",
    "refuse_partial_load",
    "take_from_checkpoint",
]

ModelT = TypeVar("ModelT", bound="PreTrainedModel")
SpecT = TypeVar("SpecT", bound="Spec")

log = logging.getLogger(__name__)

SHOWN_KEYS = 3
"""Keys named per kind of problem in a refusal (the first, sorted)."""


def looks_local(value: str) -> bool:
    """Whether ``value`` names a local path rather than a Hugging Face model name: absolute,
    ``./``, ``../`` or ``~``, or with a directory part that exists."""
    path = Path(value).expanduser()
    if path.is_absolute() or value.startswith(("./", "../", "~")) or path.exists():
        return True
    return len(path.parts) > 1 and path.parent.exists()


def checkpoint_location_problem(
    value: str, markers: Sequence[str] = ("config.json",), context: ValidationInfo | None = None
) -> str | None:
    """Why ``value`` cannot be read without the network, or ``None`` when it can.

    Args:
        value: a ``pretrained`` (or ``tokenizer``) value: a directory or a model name.
        markers: files of which a cached model of that name has one (``config.json``; a
            tokenizer's `TOKENIZER_FILES`).
        context: the spec's validation info; a value among its context's ``provided`` (what
            a run being rebuilt kept, `modaloom.core.portable`) is never read, so it is fine.

    Returns:
        The problem, phrased for a spec error.
    """
    provided = ((context.context if context is not None else None) or {}).get("provided", ())
    if value in provided:
        return None
    if looks_local(value):
        path = Path(value).expanduser()
        return None if path.exists() else f"{value!r} does not exist"
    if any(isinstance(_cache_entry(value, marker), str) for marker in markers):
        return None
    return (
        f"{value!r} is neither a local path nor a model in the Hugging Face cache, and nothing "
        "is downloaded at run time; give a checkpoint directory (or download the model first "
        "with `huggingface-cli download`)"
    )


def _cache_entry(name: str, filename: str) -> object:
    """The cached path of ``filename`` of model ``name`` (a `str`), or what says it is not."""
    try:
        return try_to_load_from_cache(name, filename)
    except ValueError:  # an invalid repository id (HFValidationError)
        return None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence `transformers`' logging (its load report) and progress bars for the block."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]
"""(key, shape in the checkpoint, shape in the component)."""


@dataclass(frozen=True)
class LoadReport:
    """What loading a checkpoint into a component left out, intended exceptions removed.

    Attributes:
        missing: the component's weights the checkpoint did not fill (left at their init).
        unexpected: checkpoint tensors the component did not use.
        mismatched: tensors whose shapes differ.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()

    @classmethod
    def of(
        cls,
        missing: Iterable[str],
        unexpected: Iterable[str],
        mismatched: Iterable[Sequence[Any]] = (),
        *,
        unused: Collection[str] = (),
        uninitialised: Collection[str] = (),
    ) -> LoadReport:
        """A report without the intended exceptions.

        Args:
            missing: module keys not in the checkpoint.
            unexpected: checkpoint keys not in the module.
            mismatched: ``(key, checkpoint shape, module shape)``.
            unused: regular expressions (matched at the start) of checkpoint keys the
                component leaves out on purpose (heads, poolers, another tower).
            uninitialised: regular expressions (searched) of module keys a checkpoint may
                lack (a decoder's new cross-attention).
        """
        shapes = tuple(
            (str(key), tuple(int(n) for n in old), tuple(int(n) for n in new))
            for key, old, new in mismatched
        )
        return cls(
            tuple(sorted(k for k in missing if not any(re.search(p, k) for p in uninitialised))),
            tuple(sorted(k for k in unexpected if not any(re.match(p, k) for p in unused))),
            tuple(sorted(shapes)),
        )

    @property
    def complete(self) -> bool:
        """Every weight came from the checkpoint and every tensor of it was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problem(self, checkpoint: str, target: str) -> str:
        """The refusal's text (see `refuse_partial_load`)."""
        parts = []
        if self.missing:
            parts.append(
                f"{_count(self.missing, 'weight')} of the component "
                f"{'is' if len(self.missing) == 1 else 'are'} not in it ({_first(self.missing)})"
            )
        if self.unexpected:
            parts.append(
                f"{_count(self.unexpected, 'tensor')} of it would be unused "
                f"({_first(self.unexpected)})"
            )
        if self.mismatched:
            key, old, new = self.mismatched[0]
            more = ", ..." if len(self.mismatched) > 1 else ""
            verb = "differs" if len(self.mismatched) == 1 else "differ"
            parts.append(
                f"{_count(self.mismatched, 'tensor')} {verb} in shape ({key}: {list(old)} in the "
                f"checkpoint, {list(new)} in the component{more})"
            )
        return (
            f"checkpoint {checkpoint!r} does not fit a {target}: {'; '.join(parts)}. It is a "
            f"checkpoint of another architecture or size: give a {target} checkpoint, or remove "
            "`pretrained` to start from a random init"
        )


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (", ..." if len(keys) > SHOWN_KEYS else "")


def refuse_partial_load(report: LoadReport, where: str, checkpoint: str, target: str) -> None:
    """Raise unless the checkpoint filled the whole component and was used whole.

    Args:
        report: what the load left out.
        where: the spec path of the ``pretrained`` field (``model.components.vision.pretrained``).
        checkpoint: the ``pretrained`` value.
        target: what the component loads (``ViTModel``, ``TimeSformer``).

    Raises:
        SpecError: at ``where``, naming the checkpoint and the first missing, unused and
            mismatched keys.
    """
    if not report.complete:
        raise SpecError([(where, report.problem(checkpoint, target))])


def load_with_info(
    model_class: type[ModelT], checkpoint: str, **kwargs: Any
) -> tuple[ModelT, dict[str, Any]]:
    """``model_class.from_pretrained`` on local files, never running the checkpoint's own code
    (``trust_remote_code=False``), quietly, with `transformers`' loading info
    (``missing_keys``, ``unexpected_keys``, ``mismatched_keys``).

    Raises:
        OSError: the checkpoint cannot be read.
    """
    with quiet_transformers():
        loaded = model_class.from_pretrained(
            checkpoint,
            local_files_only=True,
            trust_remote_code=False,
            output_loading_info=True,
            **kwargs,
        )
    model, info = cast(tuple[ModelT, dict[str, Any]], loaded)
    return model, info


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
"""Files of which a directory (or cached model) with a tokenizer has at least one."""


def _cached(checkpoint: str, name: str) -> str | None:
    """The path of file ``name`` of a checkpoint directory or cached model, ``None`` without."""
    try:
        with quiet_transformers():
            return cached_file(
                checkpoint,
                name,
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
    except (OSError, ValueError):  # not a directory, not a valid model name
        return None


def has_tokenizer(checkpoint: str) -> bool:
    """Whether a checkpoint directory or cached model has tokenizer files (`TOKENIZER_FILES`).

    `transformers`' ``AutoTokenizer`` "loads" a directory without any from its ``config.json``,
    as a tokenizer of five special tokens, so their presence is checked first.
    """
    return any(_cached(checkpoint, name) is not None for name in TOKENIZER_FILES)


def preprocessor_config(checkpoint: str) -> dict[str, Any]:
    """The checkpoint's ``preprocessor_config.json`` (local files or the cache), ``{}`` without.

    Raises:
        ValueError: the file is not a JSON object.
    """
    found = _cached(checkpoint, "preprocessor_config.json")
    if found is None:
        return {}
    settings = json.loads(Path(found).read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"{found} does not hold a JSON object")
    return settings


def take_from_checkpoint(
    config: SpecT,
    unset: Sequence[str],
    pretrained: PretrainedInput,
    field: str,
    read: Callable[[str], dict[str, Any]],
) -> SpecT:
    """``config`` (``data.<field>``) with its ``unset`` fields taken from what ``read`` finds in
    the pretrained component's checkpoint (pixel or spectrogram settings), logged at INFO.

    Raises:
        SpecError: at ``data.<field>``: ``read`` finds an unusable preprocessor config.
    """
    try:
        settings = read(pretrained.checkpoint)
    except (ValueError, TypeError) as exc:
        problem = f"preprocessor_config.json of {pretrained.where} {pretrained.checkpoint!r}: {exc}"
        raise SpecError([(f"data.{field}", problem)]) from None
    taken = {name: settings[name] for name in unset if name in settings}
    if not taken:
        return config
    log.info("data.%s: %s from %s", field, taken, pretrained.checkpoint)
    return config.model_copy(update=taken)
