"""``modaloom export``: one component of a run in its Hugging Face layout, or the whole model.

``modaloom export RUN --component vision --output DIR`` writes what the component's
`transformers` class (its ``export_class``: ``ViTModel``, ``BertModel``, ``CLIPVisionModel``,
``ASTModel``, ``TimesformerModel``, ``BertLMHeadModel``) loads with ``from_pretrained``, every
weight equal to the run's, plus the settings of the processor it reads (the tokenizer of a text
component, ``preprocessor_config.json`` of an image, video or audio one) and a model card.

``modaloom export RUN --output DIR`` writes the whole model: ``model.safetensors`` (the
checkpoint's weights), ``meta.json``, ``spec.yaml``, ``artifacts/`` (tokenizer and kept
component configurations, `modaloom.core.portable`) and the card; ``modaloom.load(DIR)`` loads
it. Nothing touches a network; pushing the directory to a hub is the user's step
(``hf upload``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from modaloom.core.checkpoint import META_FILE, MODEL_FILE, file_records, read_meta
from modaloom.core.errors import ExportError
from modaloom.core.inference import LoadedRun, load_run, resolve_checkpoint
from modaloom.core.model_card import CARD_FILE, model_card
from modaloom.core.registry import Registry
from modaloom.core.run_dir import ARTIFACTS_DIR, SPEC_FILE

__all__ = ["export_component", "export_model", "exportable"]


def exportable(components: nn.ModuleDict) -> dict[str, str]:
    """The components that have a Hugging Face layout, with the class that loads each."""
    found = {}
    for name, module in components.items():
        cls = getattr(module, "export_class", None)
        if isinstance(cls, str):
            found[name] = cls
    return found


def _fresh_output(output: Path) -> None:
    """Create ``output``; refuse one that holds files (nothing is overwritten).

    Raises:
        ExportError: ``output`` is a file or a directory that is not empty.
    """
    if output.is_file() or (output.is_dir() and any(output.iterdir())):
        raise ExportError(f"{output} is not empty; pass a new or empty --output")
    output.mkdir(parents=True, exist_ok=True)


def _can_export(run: LoadedRun, component: str) -> str:
    """The `transformers` class of ``component``, or an `ExportError` that names the ones of
    the run that have one."""
    components = run.model.components
    classes = exportable(components)
    listed = ", ".join(f"{n} ({c})" for n, c in classes.items()) or "none"
    if component not in components:
        raise ExportError(
            f"the run has no component {component!r}; components: {', '.join(components)}; "
            f"those with a Hugging Face layout: {listed}"
        )
    if component not in classes:
        kind = run.spec.model.components[component].type
        raise ExportError(
            f"component {component!r} ({kind}) has no Hugging Face layout; components that "
            f"have one: {listed}; or export the whole model (leave out --component)"
        )
    return classes[component]


def _input_field(run: LoadedRun, component: str) -> str | None:
    """The batch field whose processor goes with the exported component: of the fields it
    reads, the first the data spec sets, else the first."""
    fields = run.model.inputs.get(component, ())
    given = run.spec.data.model_fields_set
    return next((f for f in fields if f in given), fields[0] if fields else None)


def export_component(
    run: str | Path, component: str, output: str | Path, registry: Registry | None = None
) -> list[str]:
    """Write ``component`` of ``run`` in its Hugging Face layout into ``output``.

    Args:
        run: a run directory (its newest intact checkpoint) or a checkpoint directory.
        component: its name under ``model.components``.
        output: a new or empty directory.
        registry: the default registry when omitted.

    Returns:
        The names of the files written.

    Raises:
        ExportError: no such component, it has no Hugging Face layout, or ``output`` is not
            empty.
    """
    output = Path(output)
    loaded = load_run(run, registry=registry, device="cpu", with_sources=False)
    cls = _can_export(loaded, component)
    _fresh_output(output)
    module = loaded.model.components[component]
    try:
        module.export_pretrained(output)  # type: ignore[operator]
    except ExportError as exc:
        if not any(output.iterdir()):
            output.rmdir()  # leave nothing behind
        raise ExportError(f"cannot export component {component!r} as a {cls}: {exc}") from None
    field = _input_field(loaded, component)
    if field is not None and field in loaded.processors:
        loaded.processors[field].export(output)
    run_dir, _ = resolve_checkpoint(loaded.checkpoint)
    card = model_card(run_dir, loaded.checkpoint, component=component, export_class=cls)
    (output / CARD_FILE).write_text(card)
    return sorted(path.name for path in output.iterdir())


def export_model(run: str | Path, output: str | Path) -> list[str]:
    """Write the whole model of ``run`` into ``output`` (see the module docstring).

    Args:
        run: a run directory (its newest intact checkpoint) or a checkpoint directory.
        output: a new or empty directory.

    Returns:
        The names of the entries written.

    Raises:
        CheckpointError: no intact checkpoint.
        ExportError: ``output`` is not empty, or the run has no spec.yaml.
    """
    output = Path(output)
    run_dir, checkpoint = resolve_checkpoint(run)
    if not (run_dir / SPEC_FILE).is_file():
        raise ExportError(f"{run_dir} has no {SPEC_FILE}; export a run directory")
    _fresh_output(output)
    shutil.copy2(checkpoint / MODEL_FILE, output / MODEL_FILE)
    shutil.copy2(run_dir / SPEC_FILE, output / SPEC_FILE)
    if (run_dir / ARTIFACTS_DIR).is_dir():
        shutil.copytree(run_dir / ARTIFACTS_DIR, output / ARTIFACTS_DIR)
    meta: dict[str, Any] = {
        key: value for key, value in read_meta(checkpoint).items() if key in ("step", "spec")
    }
    weights = file_records(output)[MODEL_FILE]
    meta.update(exported_from=str(checkpoint), files={MODEL_FILE: weights})
    (output / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (output / CARD_FILE).write_text(model_card(run_dir, checkpoint))
    return sorted(path.name for path in output.iterdir())
