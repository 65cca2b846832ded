"""Resizing saved time and patch-position embeddings (``train.init_from``)."""

from __future__ import annotations

import torch
from torch import nn

from modaloom.core.position_resize import resize_position_embedding


class PatchEmbeddings(nn.Module):
    """Stands for a vision encoder's embeddings: positions beside a patch embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(3, 4, 2)


def test_time_embeddings_are_resized_nearest() -> None:
    saved = torch.arange(8.0).reshape(1, 4, 2)  # frames 0..3, D = 2
    resized = resize_position_embedding("model.time_embed", saved, torch.Size([1, 8, 2]), [])
    assert resized is not None
    assert resized.tensor[0, :, 0].tolist() == [0, 0, 2, 2, 4, 4, 6, 6]
    assert resized.how == "time embeddings interpolated (nearest) from 4 to 8 frames"


def test_patch_positions_keep_cls_and_resample_the_grid() -> None:
    grid = torch.linspace(0, 1, 4).repeat(4, 1)  # a 4x4 ramp along x
    saved = torch.cat([torch.full((1, 1), 9.0), grid.reshape(16, 1)]).unsqueeze(0)  # (1, 17, 1)
    owner = [PatchEmbeddings()]
    resized = resize_position_embedding(
        "e.position_embeddings", saved, torch.Size([1, 65, 1]), owner
    )
    assert resized is not None
    assert resized.how == "position embeddings interpolated (bicubic) from 4x4 to 8x8 patches"
    assert resized.tensor[0, 0, 0] == 9.0
    rows = resized.tensor[0, 1:, 0].reshape(8, 8)
    assert torch.allclose(rows, rows[:1].expand(8, 8)) and bool((rows[0].diff() >= 0).all())


def test_other_shape_changes_have_no_known_meaning() -> None:
    text = torch.zeros(64, 8)  # BERT positions: a square count, but no patch grid beside them
    key = "bert.embeddings.position_embeddings.weight"
    assert resize_position_embedding(key, text, torch.Size([16, 8]), [nn.Embedding(16, 8)]) is None
    owner = [PatchEmbeddings()]
    wider = torch.zeros(1, 17, 8)  # another width is not a position change
    assert (
        resize_position_embedding("e.position_embeddings", wider, torch.Size([1, 17, 4]), owner)
        is None
    )
    assert (
        resize_position_embedding("proj.weight", torch.zeros(4, 2), torch.Size([8, 2]), owner)
        is None
    )
