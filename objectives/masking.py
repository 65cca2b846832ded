"""Token and patch masking of the masked-modelling objectives, written once (SPEC B6, B8).

`mask_tokens_for_mlm` serves MGC (VALOR, 60% of the caption) and MVLM's CMLM (COTS, 15%);
`block_mask_patches` is MVLM's BEiT-style CMVM patch masking. Attention masks are the decoder's
business (`modalities/text_decoder.py`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["block_mask_patches", "mask_tokens_for_mlm"]


def _ensure_one(masked: Tensor, maskable: Tensor, generator: torch.Generator | None) -> Tensor:
    """Mask one random maskable position in rows that have maskable positions but none masked."""
    scores = torch.rand(masked.shape, generator=generator, device=masked.device)
    pick = scores.masked_fill(~maskable, -1.0).argmax(dim=1)  # (B,)
    needs = maskable.any(dim=1) & ~masked.any(dim=1)
    forced = torch.zeros_like(masked)
    forced[torch.arange(masked.shape[0], device=masked.device), pick] = True
    return masked | (forced & needs[:, None])


def mask_tokens_for_mlm(
    input_ids: Tensor,
    attention_mask: Tensor,
    mask_token_id: int,
    vocab_size: int,
    prob: float,
    special_ids: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    maskable_special_ids: Sequence[int] = (),
    replace_strategy: Literal["mask", "bert_80_10_10"] = "mask",
    ensure_one: bool = True,
) -> tuple[Tensor, Tensor]:
    """Choose tokens to predict and corrupt them (VALOR MGC 60%, COTS CMLM 15%, SPEC B6/B8).

    A token is maskable when ``attention_mask`` is 1 and its id is not in ``special_ids``, or
    its id is in ``maskable_special_ids`` (pass ``[SEP]`` there for MGC so the model learns to
    stop). [CLS] and [PAD] are never masked as long as they are in ``special_ids``.

    Args:
        input_ids: (B, L) token ids.
        attention_mask: (B, L) 1 for real tokens. Positions with 0 are never masked; pass
            ``attention_mask * answer_span`` to mask only an answer (the QA variant of B6).
        mask_token_id: the [MASK] id.
        vocab_size: random replacement ids are drawn from ``[0, vocab_size)``.
        prob: probability of choosing each maskable token.
        special_ids: ids never chosen (CLS, PAD, SEP, ...).
        generator: random source (on the ids' device).
        maskable_special_ids: ids of ``special_ids`` that may be chosen anyway.
        replace_strategy: ``"mask"`` puts [MASK] at every chosen token; ``"bert_80_10_10"``
            uses [MASK] for 80%, a random id for 10% and keeps the token for 10%.
        ensure_one: force one chosen token in every row that has a maskable token.

    Returns:
        ``(masked_ids, labels)``, both (B, L): the corrupted ids, and the original ids at chosen
        positions with -100 elsewhere.
    """
    device = input_ids.device
    never_ids = sorted(set(special_ids) - set(maskable_special_ids))
    never = torch.tensor(never_ids, dtype=input_ids.dtype, device=device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, never)
    draws = torch.rand(input_ids.shape, generator=generator, device=device)
    chosen = (draws < prob) & maskable
    if ensure_one:
        chosen = _ensure_one(chosen, maskable, generator)
    labels = input_ids.masked_fill(~chosen, -100)
    if replace_strategy == "mask":
        return input_ids.masked_fill(chosen, mask_token_id), labels
    if replace_strategy != "bert_80_10_10":
        raise ValueError(
            f"replace_strategy must be 'mask' or 'bert_80_10_10', got {replace_strategy!r}"
        )
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    random_ids = torch.randint(
        vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype
    )
    masked_ids = torch.where(chosen & (split < 0.8), mask_token_id, input_ids)
    masked_ids = torch.where(chosen & (split >= 0.8) & (split < 0.9), random_ids, masked_ids)
    return masked_ids, labels


def _add_block(mask: list[list[bool]], budget: int, min_area: int, rng: random.Random) -> int:
    """Mask one random rectangle of new patches (at most ``budget``); returns how many were added.

    BEiT's ``MaskingGenerator._mask``: area ~ U(min_area, budget), log-aspect ratio
    ~ U(log 0.3, log 1/0.3), up to ten attempts.
    """
    height, width = len(mask), len(mask[0])
    for _ in range(10):
        area = rng.uniform(min_area, budget)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h = round(math.sqrt(area * aspect))
        w = round(math.sqrt(area / aspect))
        if 0 < h < height and 0 < w < width:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            cells = [(r, c) for r in range(top, top + h) for c in range(left, left + w)]
            new = [cell for cell in cells if not mask[cell[0]][cell[1]]]
            if 0 < len(new) <= budget:
                for r, c in new:
                    mask[r][c] = True
                return len(new)
    return 0


def _block_mask_row(grid_h: int, grid_w: int, target: int, rng: random.Random) -> list[bool]:
    mask = [[False] * grid_w for _ in range(grid_h)]
    count = 0
    while count < target:
        added = _add_block(mask, target - count, min(16, target - count), rng)
        if added == 0:
            break
        count += added
    flat = [cell for row in mask for cell in row]
    free = [i for i, cell in enumerate(flat) if not cell]
    for i in rng.sample(free, target - count):  # top up when no block fits the remaining budget
        flat[i] = True
    return flat


def block_mask_patches(
    batch: int,
    grid_h: int,
    grid_w: int,
    ratio: float = 0.4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """BEiT-style block-wise patch masking (COTS CMVM, SPEC B8).

    Rectangles of at least 16 patches (fewer near the end of the budget) with aspect ratio in
    [0.3, 1/0.3] are masked until ``round(ratio * N)`` patches are; when no rectangle fits the
    remaining budget, random single patches complete it, so every row has exactly that count.

    Args:
        batch: B.
        grid_h: patch rows.
        grid_w: patch columns.
        ratio: fraction of the N = grid_h * grid_w patches to mask.
        generator: random source (seeds a Python RNG, so any device's generator works).
        device: where to put the result.

    Returns:
        (B, N) bool, True = masked, row-major over the grid.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    target = round(ratio * grid_h * grid_w)
    where = generator.device if generator is not None else None
    rng = random.Random(int(torch.randint(2**62, (1,), generator=generator, device=where)))
    rows = [_block_mask_row(grid_h, grid_w, target, rng) for _ in range(batch)]
    return torch.tensor(rows, dtype=torch.bool, device=device).reshape(batch, grid_h * grid_w)
