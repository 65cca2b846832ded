"""Token masking (MGC, CMLM) and BEiT block-wise patch masking (CMVM)."""

from __future__ import annotations

import pytest
import torch

from modaloom.objectives.masking import block_mask_patches, mask_tokens_for_mlm

CLS, SEP, PAD, MASK = 101, 102, 0, 103
SPECIAL = (CLS, SEP, PAD, MASK)


def _captions() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(
        [
            [CLS, 7, 8, 9, 10, SEP, PAD, PAD],
            [CLS, 11, SEP, PAD, PAD, PAD, PAD, PAD],
            [CLS, SEP, PAD, PAD, PAD, PAD, PAD, PAD],
        ]
    )
    return ids, (ids != PAD).long()


def test_mask_tokens_never_touches_special_or_padding_and_labels_match() -> None:
    ids, attn = _captions()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        masked, labels = mask_tokens_for_mlm(ids, attn, MASK, 200, 0.6, SPECIAL, g)
        chosen = labels != -100
        assert not chosen[torch.isin(ids, torch.tensor(SPECIAL))].any()
        assert torch.equal(labels[chosen], ids[chosen])
        assert (masked[chosen] == MASK).all() and torch.equal(masked[~chosen], ids[~chosen])
        # ensure_one: rows 0 and 1 have maskable words, row 2 has none
        assert chosen[0].any() and chosen[1].any() and not chosen[2].any()


def test_sep_is_maskable_when_asked() -> None:
    ids, attn = _captions()
    masked, labels = mask_tokens_for_mlm(
        ids, attn, MASK, 200, 1.0, SPECIAL, maskable_special_ids=[SEP]
    )
    assert labels[2].tolist() == [-100, SEP] + [-100] * 6
    assert masked[0].tolist() == [CLS, MASK, MASK, MASK, MASK, MASK, PAD, PAD]


def test_ensure_one_forces_a_token_at_zero_probability() -> None:
    ids, attn = _captions()
    _, labels = mask_tokens_for_mlm(ids, attn, MASK, 200, 0.0, SPECIAL)
    assert (labels != -100).sum(dim=1).tolist() == [1, 1, 0]
    _, labels = mask_tokens_for_mlm(ids, attn, MASK, 200, 0.0, SPECIAL, ensure_one=False)
    assert (labels != -100).sum().item() == 0


def test_attention_mask_restricts_masking_to_a_span() -> None:
    ids, attn = _captions()
    answer = torch.zeros_like(attn)
    answer[0, 3:5] = 1
    _, labels = mask_tokens_for_mlm(ids, attn * answer, MASK, 200, 1.0, SPECIAL)
    assert labels[0].tolist() == [-100, -100, -100, 9, 10, -100, -100, -100]


def test_bert_80_10_10_proportions() -> None:
    ids = torch.full((400, 50), 5)
    g = torch.Generator().manual_seed(1)
    masked, labels = mask_tokens_for_mlm(
        ids, torch.ones_like(ids), MASK, 1000, 0.5, SPECIAL, g, replace_strategy="bert_80_10_10"
    )
    chosen = labels != -100
    n = chosen.sum().item()
    assert abs(n / ids.numel() - 0.5) < 0.01
    as_mask = (masked[chosen] == MASK).sum().item() / n
    kept = (masked[chosen] == 5).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_unknown_replace_strategy() -> None:
    ids, attn = _captions()
    with pytest.raises(ValueError, match="replace_strategy must be 'mask' or 'bert_80_10_10'"):
        mask_tokens_for_mlm(ids, attn, MASK, 200, 0.5, SPECIAL, replace_strategy="zero")  # type: ignore[arg-type]


@pytest.mark.parametrize(("grid", "ratio"), [((24, 24), 0.4), ((14, 14), 0.4), ((4, 4), 0.75)])
def test_block_mask_exact_count(grid: tuple[int, int], ratio: float) -> None:
    g = torch.Generator().manual_seed(2)
    mask = block_mask_patches(8, grid[0], grid[1], ratio, g)
    n = grid[0] * grid[1]
    assert mask.shape == (8, n) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [round(ratio * n)] * 8


def test_block_mask_is_blockwise_and_reproducible() -> None:
    first = block_mask_patches(16, 24, 24, 0.4, torch.Generator().manual_seed(3))
    again = block_mask_patches(16, 24, 24, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    grid = first.reshape(16, 24, 24).float()
    # masked patches of block masking have far more masked 4-neighbours than random masking (0.4)
    right = (grid[:, :, 1:] * grid[:, :, :-1]).sum() / grid[:, :, :-1].sum()
    assert right > 0.6
