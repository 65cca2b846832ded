"""digits-av: the embedded demo data set, built on the fly from scikit-learn's handwritten digits.

Each clip shows one real 8x8 scan of a *visual* digit (upscaled, drifting a few pixels, with
noise; 8 frames of 32x32 at 8 fps, h264) while the DTMF tone pair of an *audio* digit plays
(1 s at 16 kHz with noise, AAC), with a caption naming both and two QA pairs. The label part
holds the scans as 32x32 PNGs with their class, for UniVLC prompts ("a photo of the digit
seven"). Train and test are split by scan: test clips and labels use scans never seen in
training. Everything is a deterministic function of the seed.

Layout of a built set (webdataset shards)::

    clips-train-000000.tar ...   <key>.mp4 (video + audio), <key>.json (caption, qa, digits)
    clips-test-000000.tar
    labels-train-000000.tar ...  <key>.png, <key>.cls
    labels-test-000000.tar
    digits-av.json               written last: the set is complete when it exists
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import RawSample, Source
from modaloom.core.registry import Registry
from modaloom.core.shards import write_shards
from modaloom.core.spec_models import Seed, SourceSpec
from modaloom.plugins.sources.labels import InMemorySource, LabelSource
from modaloom.plugins.sources.webdataset import WebDatasetSource, WebDatasetSpec

VERSION = "v2"  # v2: x264 mbtree off (v1 clips were not reproducible byte for byte)
MARKER = "digits-av.json"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DTMF = {
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
    0: (941, 1336),
}
"""Row and column frequencies (Hz) of each digit's telephone keypad tone."""
CAPTIONS = (
    "a {v} is shown while a tone for {a} plays",
    "the digit {v} appears and the {a} tone sounds",
    "a handwritten {v} on screen with the keypad tone of {a}",
    "we see a {v} and hear a {a}",
)
LABEL_TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.", "an image of the number {}.")
QUESTIONS = ("which digit is shown?", "which tone plays?")
SIZE, DIGIT_SIZE, FRAMES, FPS, SAMPLE_RATE = 32, 24, 8, 8, 16000
SHARD_SIZE = 1000
TEST_FRACTION = 0.2


@dataclass
class DigitsAvInfo:
    """What a built set holds.

    Attributes:
        root: its directory.
        seed, num_train, num_test: the build parameters (clips per split).
        counts: samples per part and split (``clips-train``, ``labels-test``, ...).
        shards: shard file names per part and split.
        build_seconds: time the build took.
        total_bytes: size of all shards.
    """

    root: str
    seed: int
    num_train: int
    num_test: int
    counts: dict[str, int] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    build_seconds: float = 0.0
    total_bytes: int = 0
    version: str = VERSION

    def urls(self, part: str, split: str) -> list[str]:
        """Paths of one part's shards (``part``: clips or labels; ``split``: train or test)."""
        return [str(Path(self.root) / name) for name in self.shards[f"{part}-{split}"]]


# ------------------------------------------------------------------------------ rendering


def split_scans(targets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Scan indices of each split, stratified by class (20% of each class is test)."""
    rng = np.random.default_rng([seed, 0])
    train, test = [], []
    for digit in range(10):
        scans = rng.permutation(np.flatnonzero(targets == digit))
        cut = round(len(scans) * TEST_FRACTION)
        test.append(scans[:cut])
        train.append(scans[cut:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def upscale(scan: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 scan (values 0..16) as a bilinearly upscaled (size, size) uint8 image."""
    image = Image.fromarray(np.clip(scan * 16.0, 0, 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def render_frames(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8: the digit drifting a few pixels, with noise."""
    digit = upscale(scan, DIGIT_SIZE).astype(np.float32)
    room = SIZE - DIGIT_SIZE
    start = rng.integers(0, room + 1, size=2)
    velocity = rng.choice([-1, 1], size=2) * rng.integers(0, 2, size=2)
    frames = np.zeros((FRAMES, SIZE, SIZE), np.float32)
    for index in range(FRAMES):
        top, left = np.clip(start + velocity * index, 0, room)
        frames[index, top : top + DIGIT_SIZE, left : left + DIGIT_SIZE] = digit
    frames += rng.normal(0.0, 8.0, frames.shape)
    return np.repeat(np.clip(frames, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def dtmf_tone(digit: int, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    """(S,) float32 at SAMPLE_RATE: the digit's DTMF pair with random phases and noise."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    low, high = DTMF[digit]
    phases = rng.uniform(0, 2 * np.pi, size=2)
    wave = 0.3 * (
        np.sin(2 * np.pi * low * t + phases[0]) + np.sin(2 * np.pi * high * t + phases[1])
    )
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fades: no clicks
    return (wave * ramp + rng.normal(0.0, 0.02, t.shape)).astype(np.float32)


def encode_clip(frames: np.ndarray, audio: np.ndarray) -> bytes:
    """An mp4 with h264 video (yuv420p, crf 12) and mono AAC audio."""
    import av  # lazily: only building the set needs FFmpeg

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
        # mbtree off: with it, x264 (core 165) encodes these 32x32 clips differently from one
        # run to the next (about 1 clip in 300), and the set must be a function of its seed.
        video.options = {
            "crf": "12",
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        sound.bit_rate = 32000
        sound.options = {"aac_coder": "fast"}
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        frame = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return buffer.getvalue()


ClipTask = tuple[int, str, int, int, int, int, np.ndarray]
"""(seed, split, index, visual digit, audio digit, scan index, 8x8 scan)."""


def make_clip(task: ClipTask) -> tuple[str, bytes, bytes]:
    """One clip's (key, mp4, json)."""
    seed, split, index, visual, audio_digit, scan_index, scan = task
    rng = np.random.default_rng([seed, 1 if split == "train" else 2, index])
    mp4 = encode_clip(render_frames(scan, rng), dtmf_tone(audio_digit, rng))
    v, a = DIGIT_NAMES[visual], DIGIT_NAMES[audio_digit]
    record = {
        "caption": CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(v=v, a=a),
        "qa": [{"question": QUESTIONS[0], "answer": v}, {"question": QUESTIONS[1], "answer": a}],
        "visual_digit": visual,
        "audio_digit": audio_digit,
        "scan": scan_index,
    }
    return f"{split}-{index:06d}", mp4, json.dumps(record).encode()


def clip_tasks(
    seed: int, split: str, count: int, images: np.ndarray, targets: np.ndarray, scans: np.ndarray
) -> list[ClipTask]:
    """What each clip of a split shows: digits drawn uniformly, a scan of the visual digit."""
    rng = np.random.default_rng([seed, 3 if split == "train" else 4])
    by_digit = {d: scans[targets[scans] == d] for d in range(10)}
    tasks = []
    for index in range(count):
        visual, audio_digit = (int(d) for d in rng.integers(0, 10, size=2))
        scan = int(rng.choice(by_digit[visual]))
        tasks.append((seed, split, index, visual, audio_digit, scan, images[scan]))
    return tasks


def png_bytes(scan: np.ndarray) -> bytes:
    """A scan upscaled to SIZE x SIZE as a grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(upscale(scan, SIZE)).save(buffer, format="PNG")
    return buffer.getvalue()


def label_members(scan: np.ndarray, digit: int) -> dict[str, bytes]:
    """The members of one image-label sample: the PNG and its class."""
    return {"png": png_bytes(scan), "cls": str(digit).encode()}


# ------------------------------------------------------------------------------ writing


def _clips(tasks: list[ClipTask], workers: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    if workers <= 1:
        results: Iterable[tuple[str, bytes, bytes]] = map(make_clip, tasks)
        yield from ((key, {"mp4": mp4, "json": js}) for key, mp4, js in results)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        for key, mp4, js in pool.imap(make_clip, tasks, chunksize=32):
            yield key, {"mp4": mp4, "json": js}


def build_digits_av(
    output_dir: str | Path,
    seed: int = 0,
    num_train: int = 3000,
    num_test: int = 500,
    workers: int = 2,
) -> DigitsAvInfo:
    """Build the set into ``output_dir``; the marker file comes last.

    Each shard is written to a temporary file and renamed, and the bytes are a function of the
    parameters, so ranks that build the same set at once never expose a partial shard.

    Args:
        output_dir: where the shards and ``digits-av.json`` go.
        seed: everything (scan split, digits, noise, captions) is a function of it.
        num_train: train clips.
        num_test: test clips.
        workers: encoding processes.

    Returns:
        The set's `DigitsAvInfo` (also written to ``digits-av.json``).
    """
    from sklearn.datasets import load_digits

    started = time.perf_counter()
    root = Path(output_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)
    digits = load_digits()
    images, targets = digits.images.astype(np.float32), digits.target.astype(np.int64)
    info = DigitsAvInfo(str(root), seed, num_train, num_test)
    for split, scans in split_scans(targets, seed).items():
        count = num_train if split == "train" else num_test
        tasks = clip_tasks(seed, split, count, images, targets, scans)
        info.shards[f"clips-{split}"] = write_shards(root, f"clips-{split}", _clips(tasks, workers))
        labels = (
            (f"{split}-scan{s:04d}", label_members(images[s], int(targets[s]))) for s in scans
        )
        info.shards[f"labels-{split}"] = write_shards(root, f"labels-{split}", labels)
        info.counts[f"clips-{split}"], info.counts[f"labels-{split}"] = count, len(scans)
    files = [root / name for names in info.shards.values() for name in names]
    for stale in {*root.glob("clips-*.tar"), *root.glob("labels-*.tar")} - set(files):
        stale.unlink()  # shards of an earlier build with more samples
    info.total_bytes = sum(path.stat().st_size for path in files)
    info.build_seconds = round(time.perf_counter() - started, 3)
    temporary = root / f".{MARKER}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(asdict(info), indent=1))
    os.replace(temporary, root / MARKER)
    return info


def default_cache_dir(seed: int, num_train: int, num_test: int) -> Path:
    """``~/.cache/modaloom/digits-av/<version>-<seed>`` (plus the sizes when not the default)."""
    sizes = "" if (num_train, num_test) == (3000, 500) else f"-{num_train}x{num_test}"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "modaloom" / "digits-av" / f"{VERSION}-{seed}{sizes}"


def ensure_digits_av(
    cache_dir: str | Path | None,
    seed: int = 0,
    num_train: int = 3000,
    num_test: int = 500,
    workers: int = 2,
) -> DigitsAvInfo:
    """The set in ``cache_dir`` (the default cache when ``None``), built first when missing,
    half-built or built with other parameters."""
    if cache_dir is None:
        root = default_cache_dir(seed, num_train, num_test)
    else:
        root = Path(cache_dir).expanduser()
    marker = root / MARKER
    if marker.is_file():
        info = DigitsAvInfo(**json.loads(marker.read_text()))
        built_with = (info.version, info.seed, info.num_train, info.num_test)
        if built_with == (VERSION, seed, num_train, num_test):
            info.root = str(root)
            return info
    return build_digits_av(root, seed, num_train, num_test, workers)


# ------------------------------------------------------------------------------ source


class DigitsAvSpec(SourceSpec):
    """The built-in digits-av demo set (built into a cache directory on first use)."""

    type: Literal["digits_av"] = "digits_av"
    split: Literal["train", "test"] = "train"
    """Train or test (disjoint scans)."""
    part: Literal["clips", "labels", "qa"] = "clips"
    """Clips (video + audio + caption + QA), image-label samples (PNG + class prompts), or
    ``qa``: the clips with their two QA pairs as ``text`` (training picks one per sample)."""
    seed: Seed = 0
    """Build seed."""
    num_train_clips: int = Field(3000, ge=1)
    """Train clips."""
    num_test_clips: int = Field(500, ge=1)
    """Test clips."""
    cache_dir: str | None = None
    """Where the set is built; ``~/.cache/modaloom/digits-av/<version>-<seed>`` by default."""
    label_offset: int | None = Field(None, ge=0)
    """First label id of the label part (see `modaloom.plugins.sources.labels`)."""
    caption_template: str | None = None
    """Re-caption the clips with this template, ``{v}`` the visual digit's name and ``{a}`` the
    audio digit's (e.g. ``"a {a} tone with the digit {v}"``, wording pretraining never saw, for
    fine-tuning); ``null`` keeps the built captions. Only for ``part: clips``."""

    @model_validator(mode="after")
    def _check_template(self) -> DigitsAvSpec:
        template = self.caption_template
        if template is None:
            return self
        if self.part != "clips":
            raise ValueError(f"caption_template applies to part: clips, not part: {self.part}")
        try:
            filled = template.format(v="\0", a="\1")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"caption_template {template!r} is not a template of {{v}} and {{a}}: {exc!r}"
            ) from None
        if "\0" not in filled or "\1" not in filled:
            raise ValueError(f"caption_template {template!r} must name both {{v}} and {{a}}")
        return self


def recaption(samples: list[RawSample], template: str) -> list[RawSample]:
    """``samples`` with ``text`` = ``template`` filled with each clip's two digit names."""
    for sample in samples:
        visual, audio = int(sample["visual_digit"]), int(sample["audio_digit"])
        sample["text"] = template.format(v=DIGIT_NAMES[visual], a=DIGIT_NAMES[audio])
    return samples


CLIP_FIELDS = {
    "video": "mp4",
    "audio": "mp4",
    "text": "json.caption",
    "qa": "json.qa",
    "visual_digit": "json.visual_digit",
    "audio_digit": "json.audio_digit",
}
QA_FIELDS = {**CLIP_FIELDS, "text": "json.qa"}


def load_samples(urls: list[str], fields: dict[str, str]) -> list[RawSample]:
    """Every sample of the shards, fields read into memory (``__url__`` dropped)."""
    source = WebDatasetSource(WebDatasetSpec(urls=urls, fields=fields))
    samples = []
    for lazy in source.iter_raw():
        sample = dict(lazy)  # reads every field
        sample.pop("__url__", None)
        samples.append(sample)
    return samples


def make_digits_av_source(config: DigitsAvSpec) -> Source:
    """Registry factory of ``digits_av``: builds the set if needed, serves it from memory."""
    info = ensure_digits_av(
        config.cache_dir, config.seed, config.num_train_clips, config.num_test_clips
    )
    if config.part in ("clips", "qa"):
        fields = CLIP_FIELDS if config.part == "clips" else QA_FIELDS
        samples = load_samples(info.urls("clips", config.split), fields)
        if config.caption_template is not None:
            samples = recaption(samples, config.caption_template)
        return InMemorySource(samples)
    labels = load_samples(info.urls("labels", config.split), {"image": "png", "label": "cls"})
    return LabelSource(
        InMemorySource(labels),
        DIGIT_NAMES,
        LABEL_TEMPLATES,
        "image",
        config.label_offset,
        seed=config.seed,
    )


@hookimpl
def modaloom_register_sources(registry: Registry) -> None:
    """Register the ``digits_av`` demo source."""
    registry.add_source(
        make_digits_av_source,
        DigitsAvSpec,
        description="built-in demo: handwritten digit clips with DTMF tones (+ labels)",
    )
