"""Cross-attention to several modalities one at a time (VALOR Tab. 11 variants)."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from modaloom.core.compose import BuildContext
from modaloom.core.interfaces import ConditionLayout
from modaloom.core.plugins import load_plugins
from modaloom.modalities.text_decoder import BertTextDecoder, self_attention_mask
from modaloom.tests.tiny import TINY_BERT

REGISTRY = load_plugins(entry_points=False)


@pytest.fixture
def decoder() -> BertTextDecoder:
    torch.manual_seed(0)
    entry = REGISTRY.get("decoder", "bert_decoder")
    assert entry.config is not None and entry.factory is not None
    spec = entry.config.model_validate(
        {"type": "bert_decoder", "config": {**TINY_BERT, "vocab_size": 50}}
    )
    module = entry.factory(spec, BuildContext(REGISTRY)).eval()
    assert isinstance(module, BertTextDecoder)
    return module


def inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (2, 6), generator=g)
    vision, audio = torch.randn(2, 3, 32, generator=g), torch.randn(2, 4, 32, generator=g)
    return ids, torch.ones_like(ids), vision, audio


def reference(
    decoder: BertTextDecoder,
    ids: Tensor,
    conditions: list[Tensor],
    combine: Literal["sequential", "parallel"],
) -> Tensor:
    """The BERT layers run by hand: self-attention, cross-attention to each condition
    (``sequential``: one after the other; ``parallel``: each from the same input, averaged),
    then the feed-forward block."""
    bert = decoder.bert
    allowed = self_attention_mask(torch.ones_like(ids), "causal")[:, None]  # (B, 1, L, L)
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    hidden = bert.embeddings(input_ids=ids)
    for layer in bert.encoder.layer:
        attended = layer.attention(hidden, bias)[0]
        outputs = [attended]
        for condition in conditions:
            query = outputs[-1] if combine == "sequential" else attended
            outputs.append(layer.crossattention(query, None, condition)[0])
        crossed = outputs[-1] if combine == "sequential" else torch.stack(outputs[1:]).mean(0)
        hidden = layer.feed_forward_chunk(crossed)
    return hidden


@pytest.mark.parametrize("combine", ["sequential", "parallel"])
def test_each_modality_is_attended_as_the_layout_says(
    decoder: BertTextDecoder, combine: Literal["sequential", "parallel"]
) -> None:
    ids, mask, vision, audio = inputs()
    layout = ConditionLayout((3, 4), combine)
    with torch.no_grad():
        ours = decoder.hidden_states(ids, mask, torch.cat([vision, audio], 1), layout=layout)
        expected = reference(decoder, ids, [vision, audio], combine)
        concat = decoder.hidden_states(ids, mask, torch.cat([vision, audio], 1))
    assert_close(ours, expected, rtol=0, atol=1e-5)
    assert not torch.equal(ours, concat)
    assert all(not layer.crossattention._forward_hooks for layer in decoder.bert.encoder.layer)


def test_the_order_of_the_segments_matters_sequentially(decoder: BertTextDecoder) -> None:
    """Tab. 11's v-a and a-v: the same modalities, attended in the other order."""
    ids, mask, vision, audio = inputs()
    with torch.no_grad():
        v_a = decoder.hidden_states(
            ids, mask, torch.cat([vision, audio], 1), layout=ConditionLayout((3, 4), "sequential")
        )
        a_v = decoder.hidden_states(
            ids, mask, torch.cat([audio, vision], 1), layout=ConditionLayout((4, 3), "sequential")
        )
    assert_close(a_v, reference(decoder, ids, [audio, vision], "sequential"), rtol=0, atol=1e-5)
    assert not torch.equal(v_a, a_v)


def test_one_segment_is_the_plain_attention(decoder: BertTextDecoder) -> None:
    ids, mask, vision, _ = inputs()
    condition_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        plain = decoder.hidden_states(ids, mask, vision, condition_mask)
        one = decoder.hidden_states(
            ids, mask, vision, condition_mask, layout=ConditionLayout((3,), "parallel")
        )
    assert torch.equal(plain, one)


def test_segments_must_cover_the_condition(decoder: BertTextDecoder) -> None:
    ids, mask, vision, audio = inputs()
    with pytest.raises(ValueError, match=r"segments \[3, 3\] do not sum to the condition length 7"):
        decoder.hidden_states(
            ids, mask, torch.cat([vision, audio], 1), layout=ConditionLayout((3, 3), "parallel")
        )
