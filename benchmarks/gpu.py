"""GPU throughput and model FLOPs utilisation (MFU) of the paper-size presets on synthetic batches.

For each preset (``valor``, ``omnivl``, ``cots`` by default) the model is built exactly as the
runner builds it: ``load_spec(preset)``, processors from `build_processors` (the tokenizer is
trained on synthetic captions holding ``data.text.vocab_size`` distinct words, so the
embedding and LM-head widths are the spec's), then `build_model`, with every stage's actions
applied in order (the model as the last stage trains it, e.g. OmniVL's inflated TimeSformer).
Batches are synthetic: random tensors shaped like each processor's output (image
``(3, S, S)``, video ``(T, 3, S, S)``, audio ``(clips, mel_bins, target_length)``), real
tokenized captions of ``max_length`` tokens, stacked by the processors' own ``collate``. Each
component reads the first batch field it accepts (``--fields`` overrides).

A step is forward (under ``torch.autocast`` in ``--precision``), backward, gradient clipping,
AdamW step and the objectives' momentum updates, as in the runner. FLOPs are counted on one
extra step with `torch.utils.flop_counter.FlopCounterMode` (matrix products and attention,
forward and backward, momentum encoders included). MFU = FLOPs per step / step time / the
device's peak dense bf16 FLOP/s, looked up by device name (A100, H100, H200; otherwise
'unknown peak').

Without CUDA it prints "skipped: no CUDA device" and exits 0, unless ``--device cpu`` or
``--dry-run`` (clip-tiny, CPU, 2 steps, batch 4) asks for a CPU run that checks the code path.

    python benchmarks/gpu.py                                    # valor, omnivl, cots on CUDA
    python benchmarks/gpu.py --presets valor --batch-size 32 --steps 20
    python benchmarks/gpu.py --dry-run
    python benchmarks/gpu.py --presets valor-tiny omnivl-tiny cots-tiny --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import string
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch.utils.flop_counter import FlopCounterMode

from modaloom.core.compose import LoomModel, build_model, count_parameters
from modaloom.core.data import SampleDecoder, build_processors
from modaloom.core.interfaces import Batch, Processor, RawSample, Source
from modaloom.core.optim import make_optimizer
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.stage_actions import stage_actions

PEAK_BF16_FLOPS = (  # dense (no sparsity) bf16 tensor-core peaks; the first match wins
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)
DRY_RUN = {"presets": ["clip-tiny"], "device": "cpu", "steps": 2, "warmup": 1, "batch_size": 4}
DEFAULTS = {"presets": ["valor", "omnivl", "cots"], "device": "cuda", "steps": 10, "warmup": 3}


class CaptionSource(Source):
    """Synthetic captions for training the tokenizer (no media)."""

    def __init__(self, captions: list[str]) -> None:
        self.captions = captions

    def iter_raw(self) -> Iterator[RawSample]:
        for index, caption in enumerate(self.captions):
            yield {"__key__": f"caption{index}", "text": caption}


def synthetic_words(count: int) -> list[str]:
    """``count`` distinct lowercase words: aa, ab, ..., zz, aaa, ..."""
    words: list[str] = []
    for length in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            words.append("".join(letters))
            if len(words) == count:
                return words
    raise AssertionError("unreachable")


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    """Device name and its peak dense bf16 FLOP/s, or ``None`` when not in the table."""
    if device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def batch_fields(model: LoomModel, processors: dict[str, Processor]) -> list[str]:
    """The first field each component accepts that a processor produces."""
    fields = {
        next(field for field in candidates if field in processors)
        for candidates in model.inputs.values()
        if any(field in processors for field in candidates)
    }
    return sorted(fields)


def media_item(field: str, config: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random processor output of one sample for a media field (``config``: the field's
    processor's resolved ``data.<field>``)."""
    if field == "image":
        shape: tuple[int, ...] = (3, config.size, config.size)
        return {"pixel_values": torch.randn(shape, generator=generator)}
    if field == "video":
        shape = (config.frames, 3, config.size, config.size)
        return {"pixel_values": torch.randn(shape, generator=generator)}
    if field == "audio":
        shape = (config.clips, config.mel_bins, config.target_length)
        return {"spectrogram": torch.randn(shape, generator=generator)}
    raise SystemExit(f"no synthetic data for field {field!r}; pass --fields")


def synthetic_batch(
    spec: Any, processors: dict[str, Processor], fields: list[str], words: list[str], size: int
) -> Batch:
    """``size`` samples of ``fields`` collated by the processors' own ``collate``."""
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    decoded = []
    for index in range(size):
        caption = " ".join(rng.choices(words, k=spec.data.text.max_length))
        sample: dict[str, Any] = {"__key__": f"s{index}", "label": None}
        sample["__meta__"] = {"text": caption}
        for field in fields:
            if field == "text":
                sample[field] = processors["text"].process(
                    caption, key=sample["__key__"], train=True, rng=rng
                )
            else:
                sample[field] = media_item(field, processors[field].config, generator)
        decoded.append(sample)
    batch = SampleDecoder(processors, train=True).collate(decoded, [])
    batch.pop("__skipped__")
    return batch


@dataclass
class Measurement:
    """One preset's numbers."""

    preset: str
    parameters: int
    batch: int
    fields: list[str]
    step_s: float
    flops: float
    memory_gib: float | None


class Trainer:
    """The runner's step without Accelerate: autocast forward, backward, clip, AdamW, momentum."""

    def __init__(self, spec: Any, model: LoomModel, device: torch.device, precision: str) -> None:
        self.model, self.device, self.spec = model, device, spec
        self.optimizer = make_optimizer(model, spec.train.optimizer)
        self.dtype = torch.bfloat16 if precision == "bf16" else None

    def step(self, batch: Batch) -> float:
        """One optimizer step; returns the loss."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.model(batch).loss
        loss.backward()
        if self.spec.train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.after_optimizer_step()
        return float(loss.detach())


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, args: argparse.Namespace, registry: Registry) -> tuple[Any, ...]:
    """Spec, processors, model with every stage's actions applied, caption words."""
    overrides = list(args.set)
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    spec = load_spec(preset, overrides, registry)
    words = synthetic_words(spec.data.text.vocab_size)
    per_caption = spec.data.text.max_length
    captions = [" ".join(words[i : i + per_caption]) for i in range(0, len(words), per_caption)]
    sources = {"captions": CaptionSource(captions)}
    processors = build_processors(spec.data, registry, sources, model=spec.model)
    torch.manual_seed(spec.train.seed)
    model = build_model(spec.model, registry, processors)
    for index, stage in enumerate(spec.train.resolved_stages()):
        for action in stage_actions(model, stage, index):
            action()
    return spec, processors, model, words


def measure(preset: str, args: argparse.Namespace, registry: Registry) -> Measurement:
    """Build, warm up, time ``--steps`` steps and count one step's FLOPs."""
    device = torch.device(args.device)
    spec, processors, model, words = build(preset, args, registry)
    fields = args.fields or batch_fields(model, processors)
    size = spec.data.batch_size
    batch = send_to_device(synthetic_batch(spec, processors, fields, words, size), device)
    model.to(device).train()
    trainer = Trainer(spec, model, device, args.precision)
    for _ in range(args.warmup):
        trainer.step(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.step(batch)
    synchronize(device)
    step_s = (time.perf_counter() - start) / args.steps
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step(batch)
    flops = float(counter.get_total_flops())
    return Measurement(preset, count_parameters(model), size, fields, step_s, flops, memory)


def si(value: float) -> str:
    """``value`` with an SI prefix: 1.23e13 -> ``12.3 T``."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def report(result: Measurement, peak: float | None) -> None:
    """One line per preset."""
    achieved = result.flops / result.step_s
    mfu = f"{100 * achieved / peak:.1f}%" if peak else "unknown peak"
    memory = f"{result.memory_gib:.1f}" if result.memory_gib is not None else "-"
    print(
        f"{result.preset:<12} {result.parameters / 1e6:>8.1f} {result.batch:>6} "
        f"{'+'.join(result.fields):<18} {result.step_s * 1000:>9.1f} "
        f"{result.batch / result.step_s:>10.1f} {si(result.flops) + 'FLOP':>12} "
        f"{si(achieved) + 'FLOP/s':>14} {memory:>8} {mfu:>12}"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Flags, with ``--dry-run`` defaults filling what was not given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", help="presets (default: valor omnivl cots)")
    parser.add_argument("--device", help="cuda (default) or cpu")
    parser.add_argument("--steps", type=int, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3)")
    parser.add_argument("--batch-size", type=int, help="per-device batch (default: the spec's)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--fields", nargs="+", help="batch fields (default: each component's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="clip-tiny, CPU, 2 steps, batch 4")
    args = parser.parse_args(argv)
    for key, value in {**DEFAULTS, **(DRY_RUN if args.dry_run else {})}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure every preset and print one table."""
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    registry = load_plugins()
    name, peak = peak_flops(torch.device(args.device))
    print(
        f"device {name}, peak bf16 {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown peak'}, "
        f"{args.precision}, {args.steps} timed steps after {args.warmup} warm-up, synthetic batches"
    )
    print(
        f"{'preset':<12} {'params M':>8} {'batch':>6} {'fields':<18} {'step ms':>9} "
        f"{'samples/s':>10} {'per step':>12} {'achieved':>14} {'mem GiB':>8} {'MFU':>12}"
    )
    for preset in args.presets:
        try:
            report(measure(preset, args, registry), peak)
        except torch.cuda.OutOfMemoryError:
            print(f"{preset:<12} out of memory; pass a smaller --batch-size")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
