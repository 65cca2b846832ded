"""``train.init_from``: start a run from another run's weights (fine-tuning).

Only weights come over: the optimizer, schedule, step, data position and random state start
fresh, and the source run's tokenizer is used when the spec sets no ``data.text.tokenizer`` (so
token ids keep their meaning). Components load by name (all that both models have, unless
``components`` names some); an objective's heads, momentum copies and queues load only when
``objectives`` names it, matched by name through the spec the checkpoint records.

Shapes with a known meaning are resized: momentum queues of another ``queue_size`` keep their
newest rows (`FeatureQueue.resized_state`), time and patch-position embeddings are interpolated
(`modaloom.core.position_resize`). Any other shape change is refused, before training, with
the key and both shapes. Momentum copies the checkpoint does not give (absent or not requested)
start from the loaded online weights. What happened goes to the log and to
``OUTPUT/init_report.json`` (`InitReport`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modaloom.core import checkpoint as ckpt
from modaloom.core.errors import CheckpointError, SpecError
from modaloom.core.momentum import FeatureQueue, MomentumCopy
from modaloom.core.position_resize import resize_position_embedding
from modaloom.core.run_dir import ARTIFACTS_DIR
from modaloom.core.spec_models import ExperimentSpec, InitFromSpec

log = logging.getLogger(__name__)

INIT_REPORT_FILE = "init_report.json"
TOKENIZER_ARTIFACT = "tokenizer"
WHERE = "train.init_from"


@dataclass
class InitSource:
    """The checkpoint a fine-tuning run starts from.

    Attributes:
        request: ``train.init_from``.
        checkpoint: its newest intact checkpoint (or the one named).
        run: the run directory holding it.
        objectives: the names of its objectives, in order (``None``: not recorded).
        artifacts: the source run's artifacts, when its tokenizer is to be used.
    """

    request: InitFromSpec
    checkpoint: Path
    run: Path
    objectives: list[str] | None
    artifacts: Path | None = None


@dataclass
class InitReport:
    """What `apply_init_from` loaded (``init_report.json``); keys are state-dict names.

    Attributes:
        source: the checkpoint read.
        step: its step.
        components: the components loaded.
        objectives: the objectives loaded.
        loaded: model keys filled from the checkpoint (resized ones included).
        resized: ``{"key", "checkpoint", "model", "how"}`` of each resized tensor.
        skipped: checkpoint keys not requested.
        missing: model keys the checkpoint does not give (they keep their initial values).
        unexpected: requested checkpoint keys the model does not have.
        momentum_from_online: momentum copies set to their loaded online modules.
        tokenizer: the source run's tokenizer directory used, if any.
    """

    source: str
    step: int
    components: list[str]
    objectives: list[str]
    loaded: list[str] = field(default_factory=list)
    resized: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    momentum_from_online: list[str] = field(default_factory=list)
    tokenizer: str | None = None

    def summary(self) -> str:
        """One line for the log."""
        parts = [
            f"init_from {self.source}: loaded {len(self.loaded)} tensors (components "
            f"{', '.join(self.components) or '(none)'}; objectives "
            f"{', '.join(self.objectives) or '(none)'})",
            f"resized {len(self.resized)}",
            f"skipped {len(self.skipped)} not requested",
            f"missing {len(self.missing)}",
            f"unexpected {len(self.unexpected)}",
        ]
        if self.momentum_from_online:
            parts.append(f"momentum copies from the online weights: {self.momentum_from_online}")
        if self.tokenizer is not None:
            parts.append(f"tokenizer from {self.tokenizer}")
        return "; ".join(parts)

    def write(self, directory: Path) -> None:
        """Write ``init_report.json`` into the run directory."""
        (directory / INIT_REPORT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def resolve_source(spec: ExperimentSpec) -> InitSource | None:
    """The checkpoint ``train.init_from`` names, verified, or ``None`` without one.

    Raises:
        SpecError: at ``train.init_from.path``: missing, or no intact checkpoint there.
    """
    init = spec.train.init_from
    if init is None:
        return None
    from modaloom.core.inference import resolve_checkpoint  # it imports the runner

    path = Path(init.path)
    if not path.exists():
        raise SpecError([(f"{WHERE}.path", f"{path} does not exist; give a run directory")])
    try:
        run, checkpoint = resolve_checkpoint(path)
    except CheckpointError as exc:
        raise SpecError([(f"{WHERE}.path", str(exc))]) from None
    model = ckpt.read_meta(checkpoint).get("spec", {}) or {}
    listed = model.get("model", {}).get("objectives") if isinstance(model, dict) else None
    names = [o.get("name") or o["type"] for o in listed] if isinstance(listed, list) else None
    text = spec.data.modality("text")
    tokenizer = run / ARTIFACTS_DIR / TOKENIZER_ARTIFACT
    own = text is not None and getattr(text, "tokenizer", None) is not None
    artifacts = run / ARTIFACTS_DIR if tokenizer.is_dir() and not own else None
    return InitSource(init, checkpoint, run, names, artifacts)


def check_init_from(spec: ExperimentSpec) -> None:
    """What `modaloom validate` checks of ``train.init_from`` before anything is built: an intact
    checkpoint at ``path``, and every name in ``components`` / ``objectives`` in both the spec
    and the checkpoint's recorded spec.

    Raises:
        SpecError: at ``train.init_from.path`` or the first name that is missing.
    """
    source = resolve_source(spec)
    if source is None:
        return
    recorded = ckpt.read_meta(source.checkpoint).get("spec") or {}
    model = recorded.get("model") if isinstance(recorded, dict) else None
    saved = model.get("components") if isinstance(model, dict) else None
    have = list(spec.model.components)
    saved_names = list(saved) if isinstance(saved, dict) else None
    _check_names(
        "components", source.request.components or [], have, saved_names, source.checkpoint
    )
    names = [objective.name or objective.type for objective in spec.model.objectives]
    _check_names(
        "objectives", source.request.objectives, names, source.objectives, source.checkpoint
    )


def _check_names(
    kind: str, named: list[str], have: list[str], saved: list[str] | None, source: Path
) -> None:
    for index, name in enumerate(named):
        where = f"{WHERE}.{kind}.{index}"
        if name not in have:
            raise SpecError([(where, f"no {kind[:-1]} {name!r} in model.{kind} ({have})")])
        if saved is None:
            problem = f"{source} records no spec, so its {kind} cannot be matched by name"
            raise SpecError([(where, f"{problem}; leave {WHERE}.{kind} out")])
        if name not in saved:
            raise SpecError([(where, f"{source} has no {kind[:-1]} {name!r} (it has {saved})")])


def requested(
    model: nn.Module, source: InitSource, saved_keys: list[str]
) -> tuple[list[str], dict[int, int]]:
    """The components to load and the objectives as {checkpoint index: model index}.

    Raises:
        SpecError: a name the model or the checkpoint lacks.
    """
    init = source.request
    have = list(model.components)  # type: ignore[arg-type]
    saved = sorted({k.split(".")[1] for k in saved_keys if k.startswith("components.")})
    if init.components is None:
        components = [name for name in have if name in saved]
    else:
        _check_names("components", init.components, have, saved, source.checkpoint)
        components = list(init.components)
    names: list[str] = list(model.objective_names)  # type: ignore[arg-type]
    _check_names("objectives", init.objectives, names, source.objectives, source.checkpoint)
    saved_objectives = source.objectives or []
    objectives = {saved_objectives.index(n): names.index(n) for n in init.objectives}
    return components, objectives


def target_key(key: str, components: list[str], objectives: dict[int, int]) -> str | None:
    """The model key a checkpoint key loads into, or ``None`` when it is not requested."""
    section, _, rest = key.partition(".")
    head, _, tail = rest.partition(".")
    if section == "components" and head in components:
        return key
    if section == "objectives" and head.isdigit() and int(head) in objectives:
        return f"objectives.{objectives[int(head)]}.{tail}"
    return None


def owners(model: nn.Module, key: str) -> list[nn.Module]:
    """The modules holding ``key``, innermost first (up to three)."""
    parts = key.split(".")[:-1]
    found: list[nn.Module] = []
    while parts and len(found) < 3:
        found.append(model.get_submodule(".".join(parts)))
        parts.pop()
    return found


def resize_queues(
    model: nn.Module, saved: dict[str, Tensor], values: dict[str, Tensor], report: InitReport
) -> None:
    """Resize every queue whose saved size differs (its keys then leave ``saved``)."""
    for path, queue in model.named_modules():
        if not isinstance(queue, FeatureQueue):
            continue
        keys = {buffer: f"{path}.{buffer}" for buffer in queue.state_dict()}
        if not all(k in saved for k in keys.values()):
            continue
        old = saved[keys["ids"]].shape[0]
        widths = [saved[k].shape[1:] == getattr(queue, b).shape[1:] for b, k in keys.items()]
        if old == queue.size or not all(widths):
            continue  # another feature width does not fit: refused with the other tensors
        state = queue.resized_state({b: saved.pop(k) for b, k in keys.items()})
        kept = int(state["filled"])
        for buffer, key in keys.items():
            values[key] = state[buffer]
            if state[buffer].ndim:
                how = f"queue of {old} rows to {queue.size}: kept the newest {kept}"
                shapes = {"checkpoint": [old, *state[buffer].shape[1:]]}
                report.resized.append(
                    {"key": key, **shapes, "model": [*state[buffer].shape], "how": how}
                )


def fit(model: nn.Module, saved: dict[str, Tensor], report: InitReport) -> dict[str, Tensor]:
    """The saved tensors (by model key) in the model's shapes, resizing what has a meaning.

    Raises:
        SpecError: at ``train.init_from``: a tensor that does not fit, naming both shapes.
    """
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    saved = dict(saved)
    values: dict[str, Tensor] = {}
    resize_queues(model, saved, values, report)
    refused = []
    for key, tensor in saved.items():
        if tensor.shape == shapes[key]:
            values[key] = tensor
            continue
        resized = resize_position_embedding(key, tensor, shapes[key], owners(model, key))
        if resized is None:
            refused.append(
                f"{key}: the checkpoint has shape {list(tensor.shape)} and the model "
                f"{list(shapes[key])}"
            )
            continue
        values[key] = resized.tensor
        report.resized.append(
            {
                "key": key,
                "checkpoint": list(tensor.shape),
                "model": list(shapes[key]),
                "how": resized.how,
            }
        )
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        problem = (
            f"{refused[0]}{more}; only momentum queues and position/time embeddings are "
            "resized: leave that component or objective out of train.init_from or give it "
            "the source run's shape"
        )
        raise SpecError([(WHERE, problem)])
    return values


def momentum_from_online(model: nn.Module, loaded: set[str]) -> list[str]:
    """Set each momentum copy the checkpoint did not fill to its online module."""
    reset = []
    for path, module in model.named_modules():
        if not isinstance(module, MomentumCopy):
            continue
        for name, copy in module.copies.items():
            keys = [f"{path}.copies.{name}.{key}" for key in copy.state_dict()]
            if not all(key in loaded for key in keys):
                module.reset([name])
                reset.append(f"{path}.copies.{name}")
    return reset


def apply_init_from(model: nn.Module, source: InitSource) -> InitReport:
    """Load the requested weights of ``source`` into ``model`` (before the optimizer exists).

    Raises:
        SpecError: at ``train.init_from``: an unknown name, or a tensor that does not fit.
    """
    tensors = ckpt.read_weights(source.checkpoint)
    components, objectives = requested(model, source, list(tensors))
    names = list(model.objective_names)  # type: ignore[arg-type]
    report = InitReport(
        str(source.checkpoint),
        int(ckpt.read_meta(source.checkpoint)["step"]),
        components,
        [names[index] for index in sorted(objectives.values())],
        tokenizer=None if source.artifacts is None else str(source.artifacts / TOKENIZER_ARTIFACT),
    )
    state = model.state_dict(keep_vars=True)
    mapped: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        target = target_key(key, components, objectives)
        if target is None:
            report.skipped.append(key)
        elif target not in state:
            report.unexpected.append(key)
        else:
            mapped[target] = tensor
    values = fit(model, mapped, report)
    with torch.no_grad():
        for key, value in values.items():
            state[key].copy_(value)
    report.loaded = sorted(values)
    report.missing = sorted(key for key in state if key not in mapped)
    report.momentum_from_online = momentum_from_online(model, set(values))
    return report
