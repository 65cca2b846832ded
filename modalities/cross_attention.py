"""Cross-attention to a condition of several modalities, one modality at a time (VALOR Tab. 11).

`BertTextDecoder` cross-attends to one condition sequence; VALOR's default concatenates the
modalities' sequences (one attention over ``[F_v; F_a]``). The variants of its Tab. 11 attend to
each modality separately with the same cross-attention weights [I: the paper does not say
whether the variants add layers; sharing keeps the parameter count equal]: ``sequential``
(vision, then audio on the result: the order of the condition's segments, so ``v-a`` or
``a-v``), or ``parallel`` (each from the same input, outputs averaged).

`split_condition` cuts the concatenated condition into its segments; within `layered`, every
layer's cross-attention module gets a forward hook that takes the output for the first segment
(BERT computed it from ``encoder_hidden_states``) and applies the same module to the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["layered", "split_condition"]


def split_condition(
    states: Tensor, bias: Tensor | None, segments: Sequence[int]
) -> list[tuple[Tensor, Tensor | None]]:
    """``(states (B, N, D), bias (B, 1, L, N) | None)`` cut along N into the segments."""
    lengths = list(segments)
    if sum(lengths) != states.shape[1]:
        raise ValueError(f"segments {lengths} do not sum to the condition length {states.shape[1]}")
    pieces = states.split(lengths, dim=1)
    biases = bias.split(lengths, dim=-1) if bias is not None else [None] * len(lengths)
    return [(piece, part) for piece, part in zip(pieces, biases, strict=True)]


@contextmanager
def layered(
    modules: Sequence[nn.Module],
    others: Sequence[tuple[Tensor, Tensor | None]],
    combine: Literal["sequential", "parallel"],
) -> Iterator[None]:
    """Within the block, each cross-attention module of ``modules`` also attends to ``others``
    (the segments after the first): ``sequential`` feeds its output to the next, ``parallel``
    averages the outputs of every segment from the same input."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        source = args[0] if args else kwargs["hidden_states"]
        extra = {k: v for k, v in kwargs.items() if k not in _POSITIONAL}
        outputs = [first]
        for states, bias in others:
            query = outputs[-1] if combine == "sequential" else source
            result = module.forward(query, None, states, bias, **extra)
            outputs.append(result[0] if isinstance(result, tuple) else result)
        combined = outputs[-1] if combine == "sequential" else torch.stack(outputs).mean(dim=0)
        return (combined, *output[1:]) if isinstance(output, tuple) else combined

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_POSITIONAL = ("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")
"""Arguments the hook passes itself."""
