"""`write_shards` writes tar shards that `read_shard` reads back, by random access or streamed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modaloom.core.errors import DataError, MediaDecodeError
from modaloom.core.shards import MemberRef, expand_urls, read_shard, split_name, write_shards

SAMPLES = [
    (f"{i:06d}", {"json": f'{{"i": {i}}}'.encode(), "seg.txt": f"text {i}".encode()})
    for i in range(5)
]


def blobs_as_bytes(blobs: dict, key: str) -> dict[str, bytes]:
    return {ext: b if isinstance(b, bytes) else b.read(key) for ext, b in blobs.items()}


def test_expand_urls_and_split_name() -> None:
    assert expand_urls("a-{0..2}.tar") == ["a-0.tar", "a-1.tar", "a-2.tar"]
    assert expand_urls(["x.tar", " ", "y-{a,b}.tar"]) == ["x.tar", "y-a.tar", "y-b.tar"]
    assert split_name("dir/000017.Seg.JSON") == ("dir/000017", "seg.json")
    assert split_name("000017.mp4") == ("000017", "mp4")


def test_write_then_read_back_in_order(tmp_path: Path) -> None:
    names = write_shards(tmp_path, "part", SAMPLES, shard_size=2)
    assert names == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    assert not list(tmp_path.glob(".*.tmp"))
    read = [(key, blobs) for name in names for key, blobs in read_shard(str(tmp_path / name))]
    assert all(isinstance(b, MemberRef) for _, blobs in read for b in blobs.values())
    assert [(key, blobs_as_bytes(blobs, key)) for key, blobs in read] == SAMPLES


def test_no_sample_still_writes_one_empty_shard(tmp_path: Path) -> None:
    assert write_shards(tmp_path, "empty", []) == ["empty-000000.tar"]
    assert list(read_shard(str(tmp_path / "empty-000000.tar"))) == []


def test_wanted_and_skip_read_only_what_is_asked(tmp_path: Path) -> None:
    (name,) = write_shards(tmp_path, "s", SAMPLES)
    url = str(tmp_path / name)
    read = list(read_shard(url, wanted={"json"}, skip=3))
    assert [key for key, _ in read] == ["000003", "000004"]
    assert [set(blobs) for _, blobs in read] == [{"json"}, {"json"}]


def test_streamed_protocols_yield_bytes(tmp_path: Path) -> None:
    (name,) = write_shards(tmp_path, "s", SAMPLES)
    url = f"simplecache::file://{tmp_path / name}"  # a protocol without random access
    read = list(read_shard(url))
    assert all(isinstance(b, bytes) for _, blobs in read for b in blobs.values())
    assert [(key, dict(blobs)) for key, blobs in read] == SAMPLES


def test_truncated_and_non_tar_shards_end_with_a_warning(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    (name,) = write_shards(tmp_path, "s", SAMPLES)
    data = (tmp_path / name).read_bytes()  # each sample: 2 members of 2 blocks
    (tmp_path / "mid.tar").write_bytes(data[: 512 * 7])  # inside sample 1's second member
    (tmp_path / "end.tar").write_bytes(data[: 512 * 8])  # after sample 1, no end marker
    (tmp_path / "text.tar").write_text("not a tar file")
    with caplog.at_level(logging.WARNING, logger="modaloom.core.shards"):
        assert [key for key, _ in read_shard(str(tmp_path / "mid.tar"))] == ["000000"]
        assert "truncated or corrupt after 1 samples" in caplog.text
        assert [key for key, _ in read_shard(str(tmp_path / "end.tar"))] == ["000000", "000001"]
        assert "has no end-of-archive marker" in caplog.text
        assert list(read_shard(str(tmp_path / "text.tar"))) == []
        assert "not a readable tar file" in caplog.text


def test_missing_shard_is_a_data_error_and_a_shortened_member_a_decode_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataError) as info:
        list(read_shard(str(tmp_path / "gone.tar")))
    assert str(info.value) == (
        f"cannot open webdataset shard {str(tmp_path / 'gone.tar')!r}: not found or unreachable"
    )
    (name,) = write_shards(tmp_path, "s", SAMPLES)
    key, blobs = next(read_shard(str(tmp_path / name)))
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(MediaDecodeError, match="member data truncated"):
        blobs["json"].read(key)  # type: ignore[union-attr]
