"""Load a trained run for evaluation and inference (``modaloom.load``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import send_to_device
from torch import Tensor

from modaloom.core.checkpoint import (
    META_FILE,
    MODEL_FILE,
    STEP_DIR,
    checkpoint_problem,
    describe_damage,
    load_weights,
    newest_intact,
)
from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.data import batch_from_values, build_processors, build_sources
from modaloom.core.errors import CheckpointError
from modaloom.core.generation import TextGenerator
from modaloom.core.interfaces import Batch, Objective, Processor, Source
from modaloom.core.portable import portable_model, provided_values
from modaloom.core.preprocess import Preprocess
from modaloom.core.registry import Registry
from modaloom.core.run_dir import CHECKPOINTS_DIR, SPEC_FILE
from modaloom.core.runner import ARTIFACTS_DIR
from modaloom.core.spec import load_spec
from modaloom.core.spec_models import ExperimentSpec

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) from either of them.

    A run directory gives its newest intact checkpoint (meta.json and the weights verified);
    each newer damaged one is skipped with a warning. A directory that holds both the weights
    and ``spec.yaml`` (``modaloom export RUN --output DIR``) is its own run directory.

    Raises:
        CheckpointError: nothing loadable there, or the checkpoint named is damaged.
    """
    path = Path(path)
    if STEP_DIR.match(path.name) or any((path / f).is_file() for f in (MODEL_FILE, META_FILE)):
        problem = checkpoint_problem(path, weights_only=True)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
        return (path if (path / SPEC_FILE).is_file() else path.parent.parent), path
    found, damaged = newest_intact(path / CHECKPOINTS_DIR, weights_only=True)
    if found is None and damaged:
        raise CheckpointError(f"no intact checkpoint in {path}: {describe_damage(damaged)}")
    if found is None:
        raise CheckpointError(
            f"no complete checkpoint in {path} (expected {CHECKPOINTS_DIR}/step-N "
            "or a checkpoint directory with model.safetensors)"
        )
    for skipped, problem in damaged:
        log.warning("skipping damaged checkpoint %s: %s; loading %s", skipped, problem, found.name)
    return path, found


@dataclass
class LoadedRun:
    """A built model with its trained weights, processors and sources."""

    spec: ExperimentSpec
    registry: Registry
    processors: dict[str, Processor]
    model: LoomModel
    checkpoint: Path
    sources: dict[str, Source]
    device: torch.device


def load_run(
    checkpoint: str | Path,
    spec: ExperimentSpec | None = None,
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
    artifacts = run_dir / ARTIFACTS_DIR
    if spec is None:
        spec_path = run_dir / SPEC_FILE
        if not spec_path.is_file():
            raise CheckpointError(f"{run_dir} has no {SPEC_FILE}; pass the spec explicitly")
        try:
            tree = yaml.safe_load(spec_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            raise CheckpointError(
                f"{spec_path} is not valid YAML; pass the spec explicitly"
            ) from None
        spec = load_spec(tree, registry=registry, provided=provided_values(artifacts))
    sources: dict[str, Source] = {}
    if with_sources:
        sources = build_sources({**spec.data.sources, **spec.data.eval_sources}, registry)
    model_spec = portable_model(spec.model, artifacts)  # never the pretrained checkpoints
    processors = build_processors(spec.data, registry, {}, artifacts, model_spec)
    model = build_model(model_spec, registry, processors)
    load_weights(model, step_dir)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target).eval()
    return LoadedRun(spec, registry, processors, model, step_dir, sources, target)


class Pipeline:
    """Inference on a trained model: ``embed``, ``score`` (and, with a decoder, captions).

    Inputs are raw values as a source would yield them (strings for text, bytes or paths for
    media) or media in memory: PIL images, numpy arrays and tensors ((3, H, W) or (H, W, 3)
    images, (T, 3, H, W) or (T, H, W, 3) clips; uint8, or float in [0, 1]) and audio as
    ``(waveform, sample_rate)`` with a (channels, samples) waveform
    (`modaloom.modalities.array_inputs`). `processors` gives the transforms for a DataLoader
    of one's own, and `embed_processed` embeds their collated output.
    """

    def __init__(self, run: LoadedRun) -> None:
        self.run = run
        self.model = run.model

    @property
    def processors(self) -> dict[str, Preprocess]:
        """Per modality, ``value -> {name: tensor}`` without augmentation, with ``.collate``."""
        return {name: Preprocess(p, name) for name, p in self.run.processors.items()}

    @torch.no_grad()
    def embed_processed(self, modality: str, inputs: dict[str, Tensor]) -> Tensor:
        """L2-normalised embeddings (N, E) of a collated batch of ``processors[modality]``
        outputs (equal to `embed` on the same raw values)."""
        batch: Batch = {"__keys__": [], "__meta__": [], modality: inputs}
        return self.embedding_of(modality, send_to_device(batch, self.run.device))

    def batch(self, field: str, values: list[Any]) -> Batch:
        """Process raw values of one modality into a batch on the model's device."""
        return self.media_batch({field: values})

    def media_batch(self, media: dict[str, list[Any]]) -> Batch:
        """Process raw values of several modalities (same length) into one batch."""
        return batch_from_values(self.run.processors, media, device=self.run.device)

    def generator(self, qa: bool) -> TextGenerator:
        """The first objective that generates text (``qa``: one trained to answer questions).

        Raises:
            CheckpointError: no objective of this model does.
        """
        generator: TextGenerator = self.model.objective_with(
            lambda objective: (
                isinstance(objective, TextGenerator) and objective.answers_questions == qa
            ),
            what="answer questions" if qa else "generate captions",
            fix="add an lm or mgc objective",
            error=CheckpointError,
        )
        return generator

    @torch.no_grad()
    def caption(
        self, media: dict[str, list[Any]], num_beams: int = 3, max_length: int = 20
    ) -> list[str]:
        """Captions of media, e.g. ``caption({"video": [mp4_bytes], "audio": [mp4_bytes]})``."""
        objective = self.generator(qa=False)
        features = FeatureCache(self.model, self.media_batch(media))
        ids = objective.generate(features, num_beams=num_beams, max_length=max_length)
        return self.run.processors["text"].decode(ids)  # type: ignore[attr-defined,no-any-return]

    @torch.no_grad()
    def answer(
        self, media: dict[str, list[Any]], question: str | list[str], max_length: int = 5
    ) -> list[str]:
        """Generated answers, one per media item (one question for all, or one each)."""
        count = len(next(iter(media.values())))
        questions = [question] * count if isinstance(question, str) else list(question)
        objective = self.generator(qa=True)
        features = FeatureCache(self.model, self.media_batch(media))
        text = self.batch("text", questions)["text"]
        rows = torch.arange(count, device=self.run.device)
        ids = objective.answer(
            features, text["input_ids"], text["attention_mask"], rows, max_length=max_length
        )
        return self.run.processors["text"].decode(ids)  # type: ignore[attr-defined,no-any-return]

    def embedding_of(self, field: str, batch: Batch) -> Tensor:
        """Embeddings (N, E) of a batch's ``field`` from the first objective that can embed it
        (with the first component reading ``field`` that it embeds).

        Raises:
            CheckpointError: no objective of this model embeds ``field``.
        """
        features = FeatureCache(self.model, batch)
        objective = self.model.objective_with(
            lambda candidate: self._embedding(candidate, field, features) is not None,
            what=f"embed {field!r}",
            error=CheckpointError,
        )
        embedding = self._embedding(objective, field, features)
        assert embedding is not None
        return embedding

    def _embedding(self, objective: Objective, field: str, features: FeatureCache) -> Tensor | None:
        for component in self.components_reading(field):
            side = objective.retrieval_side((component,), features)
            if side is not None and "embedding" in side:
                return side["embedding"]
        return None

    @torch.no_grad()
    def embed(self, modality: str, inputs: list[Any]) -> Tensor:
        """L2-normalised embeddings (N, E) of raw inputs of one modality (``text``, ``image``,
        ``video``, ``audio``)."""
        return self.embedding_of(modality, self.batch(modality, inputs))

    def components_reading(self, field: str) -> list[str]:
        """Components whose input includes ``field``."""
        return [name for name, inputs in self.model.inputs.items() if field in inputs]

    @torch.no_grad()
    def score(self, texts: list[str], media: list[Any], modality: str = "image") -> Tensor:
        """Similarity (len(texts), len(media)) of captions and media, as the first objective that
        scores them computes it (a dot product for ITC, fine-grained for MGA).

        Raises:
            CheckpointError: no objective of this model scores text against ``modality``.
        """
        text_features = FeatureCache(self.model, self.batch("text", texts))
        media_features = FeatureCache(self.model, self.batch(modality, media))

        def sides(objective: Objective) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
            for text in self.components_reading("text"):
                for other in self.components_reading(modality):
                    query = objective.retrieval_side((text,), text_features)
                    target = objective.retrieval_side((other,), media_features)
                    if query is not None and target is not None:
                        return query, target
            return None

        objective = self.model.objective_with(
            lambda candidate: sides(candidate) is not None,
            what=f"score text against {modality!r}",
            error=CheckpointError,
        )
        found = sides(objective)
        assert found is not None
        return objective.retrieval_scores(*found)


def load(checkpoint: str | Path, device: str | None = None) -> Pipeline:
    """Load a run directory or checkpoint for inference (``modaloom.load``)."""
    return Pipeline(load_run(checkpoint, device=device, with_sources=False))
