"""digits-av: real h264 + AAC clips of handwritten digits and DTMF tones, split by scan."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from modaloom.core.interfaces import DataContext
from modaloom.core.plugins import load_plugins
from modaloom.modalities.audio import AudioSpec, make_audio_processor
from modaloom.modalities.video import VideoSpec, make_video_processor
from modaloom.plugins.sources.digits_av import (
    DIGIT_NAMES,
    DTMF,
    MARKER,
    DigitsAvInfo,
    DigitsAvSpec,
    build_digits_av,
    ensure_digits_av,
    make_digits_av_source,
)
from modaloom.plugins.sources.labels import LabelSource

TRAIN, TEST = 40, 20


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DigitsAvInfo:
    return build_digits_av(
        tmp_path_factory.mktemp("digits-av"), seed=0, num_train=TRAIN, num_test=TEST, workers=2
    )


def members(info: DigitsAvInfo, part: str, split: str) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of every shard of one part and split, read with plain tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    for url in info.urls(part, split):
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return samples


def test_build_writes_the_requested_counts(built: DigitsAvInfo) -> None:
    assert built.counts["clips-train"] == TRAIN and built.counts["clips-test"] == TEST
    assert built.counts["labels-train"] + built.counts["labels-test"] == 1797
    assert len(members(built, "clips", "train")) == TRAIN
    assert len(members(built, "labels", "test")) == built.counts["labels-test"]
    assert (Path(built.root) / MARKER).is_file() and built.total_bytes > 0


def test_clips_are_32px_h264_with_a_one_second_dtmf_aac_track(built: DigitsAvInfo) -> None:
    for sample in list(members(built, "clips", "test").values())[:4]:
        record = json.loads(sample["json"])
        with av.open(io.BytesIO(sample["mp4"]), "r") as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
            assert audio.sample_rate == 16000
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) >= 4 and frames[0].shape == (32, 32, 3)
        with av.open(io.BytesIO(sample["mp4"]), "r") as container:
            wave = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        assert 0.95 <= len(wave) / 16000 <= 1.1
        spectrum = np.abs(np.fft.rfft(wave))
        peaks = np.fft.rfftfreq(len(wave), 1 / 16000)[np.argsort(spectrum)[-2:]]
        low, high = DTMF[record["audio_digit"]]
        assert abs(min(peaks) - low) < 3 and abs(max(peaks) - high) < 3, (peaks, record)


def test_captions_and_qa_name_both_digits(built: DigitsAvInfo) -> None:
    records = [json.loads(s["json"]) for s in members(built, "clips", "train").values()]
    for record in records:
        visual, audio = DIGIT_NAMES[record["visual_digit"]], DIGIT_NAMES[record["audio_digit"]]
        assert visual in record["caption"] and audio in record["caption"], record
        assert record["qa"] == [
            {"question": "which digit is shown?", "answer": visual},
            {"question": "which tone plays?", "answer": audio},
        ]
    assert len({r["caption"].replace(DIGIT_NAMES[r["visual_digit"]], "V") for r in records}) > 4


def test_train_and_test_use_disjoint_scans(built: DigitsAvInfo) -> None:
    def scans(split: str) -> set[int]:
        clips = {json.loads(s["json"])["scan"] for s in members(built, "clips", split).values()}
        labels = {int(k.rpartition("scan")[2]) for k in members(built, "labels", split)}
        assert clips <= labels
        return labels

    assert not scans("train") & scans("test")


def test_same_seed_same_bytes_other_seed_other_clips(built: DigitsAvInfo, tmp_path: Path) -> None:
    again = build_digits_av(tmp_path / "again", seed=0, num_train=TRAIN, num_test=TEST, workers=1)
    for part, split in [("clips", "train"), ("labels", "test")]:
        for first, second in zip(built.urls(part, split), again.urls(part, split), strict=True):
            assert Path(first).read_bytes() == Path(second).read_bytes()
    other = build_digits_av(tmp_path / "other", seed=1, num_train=4, num_test=2, workers=1)
    assert (
        members(other, "clips", "train")["train-000000"]
        != members(built, "clips", "train")["train-000000"]
    )


def test_cache_is_reused_and_a_half_built_one_is_rebuilt(tmp_path: Path) -> None:
    info = ensure_digits_av(tmp_path, seed=0, num_train=4, num_test=2, workers=1)
    shard = Path(info.urls("clips", "train")[0])
    stamp = shard.stat().st_mtime_ns
    assert (
        ensure_digits_av(tmp_path, seed=0, num_train=4, num_test=2).build_seconds
        == info.build_seconds
    )
    assert shard.stat().st_mtime_ns == stamp
    (tmp_path / MARKER).unlink()
    shard.write_bytes(b"half")
    rebuilt = ensure_digits_av(tmp_path, seed=0, num_train=4, num_test=2, workers=1)
    assert (tmp_path / MARKER).is_file() and rebuilt.counts == info.counts
    assert shard.read_bytes()[:5] != b"half" and tarfile.is_tarfile(shard)


def test_sources_serve_clips_and_prompted_labels(built: DigitsAvInfo) -> None:
    spec = DigitsAvSpec(
        split="test", cache_dir=built.root, num_train_clips=TRAIN, num_test_clips=TEST
    )
    clips = make_digits_av_source(spec)
    assert clips.is_map_style and len(clips) == TEST
    sample = clips[0]
    assert sample["video"] is sample["audio"] and isinstance(sample["video"], bytes)
    assert sample["text"] and sample["qa"][0]["question"] == "which digit is shown?"
    video = make_video_processor(VideoSpec(frames=4, size=32), DataContext())
    audio = make_audio_processor(AudioSpec(clip_seconds=1.0, target_length=100), DataContext())
    rng = random.Random(0)
    assert video.process(sample["video"], key="k", train=True, rng=rng)["pixel_values"].shape == (
        4,
        3,
        32,
        32,
    )
    assert audio.process(sample["audio"], key="k", train=True, rng=rng)["spectrogram"].shape == (
        1,
        64,
        100,
    )
    labels = make_digits_av_source(spec.model_copy(update={"part": "labels", "label_offset": 20}))
    assert isinstance(labels, LabelSource) and len(labels) == built.counts["labels-test"]
    digit = labels.class_ids[0]
    assert labels[0]["label"] == 20 + digit and labels[0]["image"][:4] == b"\x89PNG"
    assert labels[0]["text"][0] == f"a photo of the digit {DIGIT_NAMES[digit]}."


def test_registered_as_a_source() -> None:
    registry = load_plugins(entry_points=False)
    assert registry.get("source", "digits_av").config is DigitsAvSpec


def test_a_caption_template_recaptions_the_clips(built: DigitsAvInfo) -> None:
    spec = DigitsAvSpec(
        split="test",
        cache_dir=built.root,
        num_train_clips=TRAIN,
        num_test_clips=TEST,
        caption_template="a {a} tone with the digit {v}",
    )
    clips = make_digits_av_source(spec)
    for index in range(len(clips)):
        sample = clips[index]
        visual, audio = DIGIT_NAMES[sample["visual_digit"]], DIGIT_NAMES[sample["audio_digit"]]
        assert sample["text"] == f"a {audio} tone with the digit {visual}"


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            {"caption_template": "digit {v}"},
            "caption_template 'digit {v}' must name both {v} and {a}",
        ),
        (
            {"caption_template": "{v} {a} {x}"},
            "caption_template '{v} {a} {x}' is not a template of {v} and {a}: KeyError('x')",
        ),
        (
            {"caption_template": "{v} {a}", "part": "qa"},
            "caption_template applies to part: clips, not part: qa",
        ),
    ],
)
def test_an_unusable_caption_template_is_refused(update: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        DigitsAvSpec(**update)  # type: ignore[arg-type]
    assert caught.value.errors()[0]["msg"] == f"Value error, {message}"  # type: ignore[attr-defined]
