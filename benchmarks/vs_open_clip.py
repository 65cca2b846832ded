"""Training step vs open_clip: the modaloom runner, a bare loop and open_clip's own loop.

Three contenders train for ``--steps`` steps (after ``--warmup`` untimed ones) on the same
in-memory batches (images (B, 3, S, S) float, token ids (B, L)), fp32 on the CPU, with torch's
default number of threads; repeats are interleaved and the medians of ms/step reported:

- ``runner``: `TrainingSession.run` on clip-tiny (ViT + BERT + ITC), loader replaced by the batches;
- ``bare``: a bare PyTorch loop over the same `LoomModel` (both from `runner_overhead.py`);
- ``open_clip``: an ``open_clip.CLIP`` with clip-tiny's widths, depths, heads, patch size, image
  size, vocabulary and embedding width, trained by open_clip's own ``train_one_epoch`` (from
  ``open_clip_train``, shipped with ``open_clip_torch``) with its ``ClipLoss``, the same AdamW
  (lr, weight decay on matrices only, betas, eps, ``foreach=True``), open_clip's cosine schedule
  with clip-tiny's warm-up, and clip-tiny's gradient clipping. Its text context length is the
  batches' L: open_clip adds its whole position table to every sequence, and clip-tiny pads each
  batch to its longest caption (``data.text.max_length`` is only the cap).

open_clip is optional (``pip install -e '.[bench]'``); without it that contender is skipped. No
pretrained weights are downloaded: the model is built from config dicts.

    python benchmarks/vs_open_clip.py
    python benchmarks/vs_open_clip.py --size base --steps 5 --warmup 1 --repeats 3

``--size base``: both towers 384 wide, 6 layers, 6 heads, MLP 1536, patch 16, 224 px, batch 16
(about 6 s a step on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from runner_overhead import (
    StepClock,
    bare_loop,
    clip_tiny_spec,
    decoded_batches,
    runner_loop,
    write_shapes,
)
from torch import Tensor, nn

from modaloom.core import runner as runner_module
from modaloom.core.optim import make_optimizer
from modaloom.core.plugins import load_plugins
from modaloom.core.spec_models import ExperimentSpec


@dataclass(frozen=True)
class Size:
    """A model size: batch size and the ``--set`` assignments on top of clip-tiny."""

    batch_size: int
    overrides: tuple[str, ...] = ()


def _tower(width: int, layers: int, heads: int, mlp: int) -> tuple[str, ...]:
    return tuple(
        f"model.components.{name}.config.{key}={value}"
        for name in ("vision", "text")
        for key, value in (
            ("hidden_size", width),
            ("num_hidden_layers", layers),
            ("num_attention_heads", heads),
            ("intermediate_size", mlp),
        )
    )


SIZES = {
    "tiny": Size(32),
    "base": Size(
        16,
        (
            *_tower(384, 6, 6, 1536),
            "model.components.vision.config.patch_size=16",
            "data.image.size=224",
        ),
    ),
}


def open_clip_configs(spec: ExperimentSpec, vocab_size: int, length: int) -> dict[str, Any]:
    """``open_clip.CLIP`` keyword arguments with the spec's tower and ITC sizes.

    Args:
        spec: the clip-tiny spec (ViT ``vision``, BERT ``text``, one ``itc`` objective).
        vocab_size: the trained tokenizer's vocabulary (BERT's word embedding rows).
        length: L of the token ids (open_clip's context length).
    """
    vision = spec.model.components["vision"].config
    text = spec.model.components["text"].config
    vision_cfg = {
        "layers": vision["num_hidden_layers"],
        "width": vision["hidden_size"],
        "head_width": vision["hidden_size"] // vision["num_attention_heads"],
        "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"],
        "patch_size": vision["patch_size"],
        "image_size": spec.data.image.size,
    }
    text_cfg = {
        "context_length": length,
        "vocab_size": vocab_size,
        "width": text["hidden_size"],
        "heads": text["num_attention_heads"],
        "layers": text["num_hidden_layers"],
        "mlp_ratio": text["intermediate_size"] / text["hidden_size"],
    }
    embed_dim = spec.model.objectives[0].embed_dim  # type: ignore[attr-defined]
    return {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def open_clip_batches(batches: list[dict[str, Any]]) -> list[tuple[Tensor, Tensor]]:
    """(images, token ids) pairs of the same batches, ids padded to the longest L (id 0)."""
    length = max(batch["text"]["input_ids"].shape[1] for batch in batches)
    return [
        (
            batch["image"]["pixel_values"],
            F.pad(batch["text"]["input_ids"], (0, length - batch["text"]["input_ids"].shape[1])),
        )
        for batch in batches
    ]


class _Data:
    """What ``train_one_epoch`` reads from ``data['train']``: a loader and ``set_epoch``."""

    def __init__(self, clock: StepClock, batch_size: int) -> None:
        self.dataloader = clock
        clock.num_batches = len(clock)  # type: ignore[attr-defined]
        clock.num_samples = len(clock) * batch_size  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        """Nothing to reshuffle."""


def open_clip_loop(
    model: nn.Module, spec: ExperimentSpec, batches: list[tuple[Tensor, Tensor]], warmup: int
) -> float:
    """One epoch of open_clip's ``train_one_epoch`` over ``batches`` (fresh AdamW each call).

    Returns:
        Seconds per step after the first ``warmup`` steps.
    """
    from open_clip import ClipLoss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    train = spec.train
    optimizer = make_optimizer(model, train.optimizer)  # open_clip's grouping: ndim < 2, no decay
    scheduler = cosine_lr(optimizer, train.optimizer.lr, train.scheduler.warmup_steps, len(batches))
    args = SimpleNamespace(
        device="cpu",
        precision="fp32",
        distill=False,
        accum_freq=1,
        skip_scheduler=False,
        grad_clip_norm=train.max_grad_norm,
        horovod=False,
        log_every_n_steps=train.log_every,
        batch_size=spec.data.batch_size,
        world_size=1,
        rank=0,
        local_rank=0,
        wandb=False,
    )
    clock = StepClock(batches, warmup)
    data = {"train": _Data(clock, spec.data.batch_size)}
    train_one_epoch(model, data, ClipLoss(), 0, optimizer, None, scheduler, None, args)
    return clock.per_step()


def build_open_clip(config: dict[str, Any]) -> nn.Module | None:
    """``open_clip.CLIP(**config)`` returning a dict, or None (and a line) when not installed."""
    try:
        import open_clip
        import open_clip_train.train  # noqa: F401
    except ImportError as error:
        print(f"open_clip skipped: {error} (pip install -e '.[bench]')")
        return None
    torch.manual_seed(0)
    return open_clip.CLIP(**config, output_dict=True)


def parameters(module: nn.Module, prefix: str = "") -> int:
    """Number of parameters whose name starts with ``prefix``."""
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def print_parameters(loom: nn.Module, clip: nn.Module | None, spec: ExperimentSpec) -> None:
    """Both models' parameter counts, per tower, and where they differ."""
    vision, text = parameters(loom, "components.vision"), parameters(loom, "components.text")
    print(
        f"parameters: modaloom LoomModel {parameters(loom):,} (vision {vision:,}, "
        f"text {text:,}, ITC projections + temperature {parameters(loom, 'objectives'):,})"
    )
    if clip is None:
        return
    visual = parameters(clip, "visual")
    rest = parameters(clip) - visual - 1
    print(
        f"            open_clip.CLIP {parameters(clip):,} (vision {visual:,} with its "
        f"projection, text {rest:,} with its projection, logit_scale 1)"
    )
    text_width = spec.model.components["text"].config["hidden_size"]
    positions = spec.model.components["text"].config["max_position_embeddings"]
    length = clip.context_length  # type: ignore[union-attr]
    print(
        f"            difference {parameters(loom) - parameters(clip):,}: BERT's position table "
        f"has {positions} rows, open_clip's L={length} ({(positions - length) * text_width:,}); "
        "BERT's 2 token-type rows, biases on the ITC projections and on the patch embedding "
        "(modaloom), minus open_clip's ln_pre"
    )


def median_ms(times: list[float]) -> float:
    """Median of seconds per step, in ms."""
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each loop")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved; medians reported")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    size, total = SIZES[args.size], args.warmup + args.steps
    registry = load_plugins()
    times: dict[str, list[float]] = {"runner": [], "bare": [], "open_clip": []}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_shapes(Path(tmp) / "data", 128)
        spec = clip_tiny_spec(registry, manifest, total, size.batch_size, size.overrides)
        session = runner_module.setup_session(spec, Path(tmp) / "probe", registry, False)
        batches = decoded_batches(session, total)
        pairs = open_clip_batches(batches)
        vocab = session.processors["text"].vocab_size  # type: ignore[attr-defined]
        clip = build_open_clip(open_clip_configs(spec, vocab, pairs[0][1].shape[1]))
        print_parameters(session.unwrapped, clip, spec)
        for repeat in range(args.repeats):
            times["bare"].append(bare_loop(session, batches, args.warmup))
            output = Path(tmp) / f"run{repeat}"
            times["runner"].append(runner_loop(spec, registry, output, batches, args.warmup))
            if clip is not None:
                times["open_clip"].append(open_clip_loop(clip, spec, pairs, args.warmup))
    image, ids = pairs[0]
    print(
        f"size={args.size} batch={size.batch_size} images={tuple(image.shape)} "
        f"ids={tuple(ids.shape)} steps={args.steps} (+{args.warmup} warm-up) "
        f"repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    for name, values in times.items():
        if values:
            print(f"{name:<10} {median_ms(values):8.2f} ms/step (median)")
    runner, bare = median_ms(times["runner"]), median_ms(times["bare"])
    versus = f"{runner / median_ms(times['open_clip']):.2f}" if clip is not None else "skipped"
    goal = "(goal <= 1.05 and <= 1.03)"
    print(f"runner/open_clip: {versus}  runner/bare: {runner / bare:.2f}  {goal}")


if __name__ == "__main__":
    main()
