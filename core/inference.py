"""Load a trained run for evaluation and inference (``modaloom.load``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import send_to_device
from torch import Tensor

from modaloom.core.checkpoint import latest_checkpoint, load_weights
from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.data import build_processors, build_sources
from modaloom.core.errors import CheckpointError
from modaloom.core.interfaces import Batch, Processor, Source
from modaloom.core.registry import Registry
from modaloom.core.runner import ARTIFACTS_DIR, CHECKPOINTS_DIR, SPEC_FILE
from modaloom.core.spec import load_spec


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) from either of them.

    Raises:
        CheckpointError: nothing loadable there.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path.parent.parent, path
    found = latest_checkpoint(path / CHECKPOINTS_DIR)
    if found is None:
        raise CheckpointError(
            f"no complete checkpoint in {path} (expected {CHECKPOINTS_DIR}/step-N "
            "or a checkpoint directory with model.safetensors)"
        )
    return path, found


@dataclass
class LoadedRun:
    """A built model with its trained weights, processors and sources."""

    spec: Any
    registry: Registry
    processors: dict[str, Processor]
    model: LoomModel
    checkpoint: Path
    sources: dict[str, Source]
    device: torch.device


def load_run(
    checkpoint: str | Path,
    spec: Any | None = None,
    registry: Registry | None = None,
    device: str | torch.device | None = None,
    with_sources: bool = True,
) -> LoadedRun:
    """Rebuild the model of a run and load a checkpoint's weights.

    Args:
        checkpoint: a run directory (its newest checkpoint) or a ``step-N`` directory.
        spec: the validated spec to build; the run's own ``spec.yaml`` when omitted.
        registry: the default registry when omitted.
        device: where to put the model (CUDA when available by default).
        with_sources: also build the spec's data and eval sources.
    """
    if registry is None:
        from modaloom.core.plugins import default_registry

        registry = default_registry()
    run_dir, step_dir = resolve_checkpoint(checkpoint)
    if spec is None:
        spec_path = run_dir / SPEC_FILE
        if not spec_path.is_file():
            raise CheckpointError(f"{run_dir} has no {SPEC_FILE}; pass the spec explicitly")
        spec = load_spec(yaml.safe_load(spec_path.read_text()), registry=registry)
    sources: dict[str, Source] = {}
    if with_sources:
        sources = build_sources({**spec.data.sources, **spec.data.eval_sources}, registry)
    processors = build_processors(spec.data, registry, {}, run_dir / ARTIFACTS_DIR)
    model = build_model(spec.model, registry, processors)
    load_weights(model, step_dir)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target).eval()
    return LoadedRun(spec, registry, processors, model, step_dir, sources, target)


class Pipeline:
    """Inference on a trained model: ``embed``, ``score`` (and, with a decoder, captions).

    Inputs are raw values as a source would yield them: strings for text, bytes or paths for
    media.
    """

    def __init__(self, run: LoadedRun) -> None:
        self.run = run
        self.model = run.model

    def batch(self, field: str, values: list[Any]) -> Batch:
        """Process raw values of one modality into a batch on the model's device."""
        processor = self.run.processors[field]
        rng = random.Random(0)
        items = [
            processor.process(v, key=f"input{i}", train=False, rng=rng)
            for i, v in enumerate(values)
        ]
        batch = {field: processor.collate(list(items)), "__keys__": [], "__meta__": []}
        return send_to_device(batch, self.run.device)  # type: ignore[no-any-return]

    def embedding_of(self, field: str, batch: Batch) -> Tensor:
        """Embeddings (N, E) of a batch's ``field`` from the first component and objective that
        can embed it."""
        features = FeatureCache(self.model, batch)
        for component, inputs in self.model.inputs.items():
            if field not in inputs:
                continue
            for objective in self.model.objectives:
                side = objective.retrieval_side((component,), features)  # type: ignore[operator]
                if side is not None and "embedding" in side:
                    return side["embedding"]  # type: ignore[no-any-return]
        raise CheckpointError(f"no component and objective of this model embed {field!r}")

    @torch.no_grad()
    def embed(self, modality: str, inputs: list[Any]) -> Tensor:
        """L2-normalised embeddings (N, E) of raw inputs of one modality (``text``, ``image``,
        ``video``, ``audio``)."""
        return self.embedding_of(modality, self.batch(modality, inputs))

    @torch.no_grad()
    def score(self, texts: list[str], media: list[Any], modality: str = "image") -> Tensor:
        """Dot-product similarity (len(texts), len(media)) of captions and media."""
        return self.embed("text", texts) @ self.embed(modality, media).T


def load(checkpoint: str | Path, device: str | None = None) -> Pipeline:
    """Load a run directory or checkpoint for inference (``modaloom.load``)."""
    return Pipeline(load_run(checkpoint, device=device, with_sources=False))
