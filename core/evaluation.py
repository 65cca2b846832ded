"""Evaluation plumbing: the evaluator contract, eval batches, and running ``spec.eval``."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from accelerate.utils import send_to_device
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modaloom.core import distributed
from modaloom.core.compose import FeatureCache, LoomModel
from modaloom.core.data import EvalStream, SampleDecoder, send_tensors_by_name
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import Batch, Objective, Processor, Source
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ExperimentSpec

T = TypeVar("T")


def eval_spec_error(message: str) -> SpecError:
    """A `SpecError` at ``eval`` (what an evaluator raises for a misconfigured entry)."""
    return SpecError([("eval", message)])


@dataclass
class EvalContext:
    """What an evaluator gets: the model, processors and its source.

    In a multi-process run (torchrun, ``accelerate launch``) every rank gets a context over the
    same source: `map_batches` gives each rank a share of the batches and returns all results
    on every rank, and `map_shards` splits a computation over rows the same way, so evaluators
    written with them report the metrics of a single process.
    """

    model: LoomModel
    processors: dict[str, Processor]
    source: Source
    batch_size: int
    num_workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = field(default_factory=distributed.rank)
    world: int = field(default_factory=distributed.world_size)

    def _indexed_batches(self, rank: int, world: int) -> Iterator[tuple[int, Batch]]:
        decoder = SampleDecoder(self.processors, train=False)
        stream = EvalStream(self.source, decoder, self.batch_size, rank, world)
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            generator=torch.Generator(),  # leaves the global RNG (training's dropout) untouched
            worker_init_fn=send_tensors_by_name,
        )
        for batch in loader:
            batch.pop("__skipped__", None)
            index = int(batch.pop("__index__"))
            yield index, send_to_device(batch, self.device)

    def batches(self) -> Iterator[Batch]:
        """This rank's batches (all of them in one process), in order, decoded without
        augmentation, on the model's device. Use `map_batches` to get every rank's results."""
        for _, batch in self._indexed_batches(self.rank, self.world):
            yield batch

    def map_batches(self, function: Callable[[Batch], T]) -> list[T]:
        """``function`` of every batch of the source, in source order, on every rank.

        Each rank calls ``function`` on its share of the batches (batch b on rank
        b % world); the results are exchanged, so every rank returns the same list with each
        batch's result once, as a single process would. Results must be picklable: keep tensors
        on the CPU.
        """
        local = [(i, function(batch)) for i, batch in self._indexed_batches(self.rank, self.world)]
        return distributed.gather_in_order(local)

    def map_shards(self, total: int, function: Callable[[int, int], T]) -> list[T]:
        """Split rows ``0..total-1`` into one contiguous shard per rank, in rank order.

        Args:
            total: number of rows (e.g. retrieval queries).
            function: ``function(start, stop)`` computes one shard's result.

        Returns:
            Every shard's result in row order (one element per rank), on every rank.
        """
        bounds = [total * r // self.world for r in range(self.world + 1)]
        local = function(bounds[self.rank], bounds[self.rank + 1])
        return distributed.gather_in_order([(self.rank, local)])

    def features(self, batch: Batch) -> FeatureCache:
        """A features cache over ``batch`` (encode lazily, once per component)."""
        return FeatureCache(self.model, batch)

    def objective(self, name: str | None, supports: Sequence[tuple[str, ...]]) -> Objective:
        """The named objective, or the first one whose `retrieval_side` handles ``supports``
        (tried on the source's first batch).

        Raises:
            SpecError: no objective has that name, or it (or, unnamed, every one) cannot score
                ``supports``.
        """

        def scores(objective: Objective) -> bool:
            if not supports:
                return True
            probe = self._probe_batch(supports)
            sides = [objective.retrieval_side(s, self.features(probe)) for s in supports]
            return all(side is not None for side in sides)

        return self.model.objective_with(
            scores,
            name,
            what=f"score {' against '.join(map('+'.join, supports))}",
            fix="add one (itc, mga, ...) or set `objective:`",
            error=eval_spec_error,
        )

    def _probe_batch(self, supports: Sequence[tuple[str, ...]]) -> Batch:
        """The source's first batch (on every rank: a rank may have no batch of its own)."""
        if not hasattr(self, "_probe"):
            self._probe = next(self._indexed_batches(rank=0, world=1))[1]
        return self._probe


class Evaluator(ABC):
    """Computes flat ``{"<family>.<metric>": value}`` metrics for a trained model."""

    @abstractmethod
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Run on ``ctx.source`` and return metrics."""


def concat_padded(parts: list[Tensor]) -> Tensor:
    """Concatenate along dim 0, zero-padding dim 1 to the longest part (for token tensors)."""
    if parts[0].dim() < 2 or len({p.shape[1] for p in parts}) == 1:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    padded = [
        torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts
    ]
    return torch.cat(padded)


def concat_sides(sides: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Join per-batch `retrieval_side` outputs into one gallery."""
    return {key: concat_padded([side[key] for side in sides]) for key in sides[0]}


def run_evaluators(
    spec: ExperimentSpec,
    model: LoomModel,
    processors: dict[str, Processor],
    sources: dict[str, Source],
    registry: Registry,
    device: torch.device | None = None,
    instances: list[Evaluator] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Run every entry of ``spec.eval`` and merge their metrics.

    Args:
        instances: when given, the evaluators are appended to it (their examples feed reports).
        progress: show a tqdm bar over the evaluators.
    """
    metrics: dict[str, float] = {}
    model.eval()
    batch_size = spec.data.eval_batch_size or spec.data.batch_size
    with torch.no_grad():
        for index, config in enumerate(tqdm(spec.eval, desc="eval", disable=not progress)):
            factory = registry.evaluator_factory(config.type)
            if config.source not in sources:
                raise SpecError([(f"eval.{index}.source", f"unknown source {config.source!r}")])
            ctx = EvalContext(
                model,
                processors,
                sources[config.source],
                batch_size,
                spec.data.num_workers,
                device or torch.device("cpu"),
            )
            evaluator = factory(config)
            metrics.update(evaluator.evaluate(ctx))
            if instances is not None:
                instances.append(evaluator)
    return metrics


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Write a flat, sorted metrics.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")


def format_table(metrics: dict[str, float]) -> str:
    """Two aligned columns, metric and value."""
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)
