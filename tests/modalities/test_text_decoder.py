"""BERT decoder: attention masks, cross-attention, parameter sharing and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close
from transformers import BertConfig, BertLMHeadModel

from modaloom.core.compose import BuildContext, build_model, count_parameters
from modaloom.core.errors import SpecError
from modaloom.core.plugins import load_plugins
from modaloom.core.spec import load_spec
from modaloom.modalities.text_decoder import (
    BertTextDecoder,
    bidirectional_mask,
    causal_mask,
    prefix_causal_mask,
    self_attention_mask,
    to_additive_mask,
)
from modaloom.tests.tiny import TINY_BERT

REGISTRY = load_plugins(entry_points=False)
LENGTH = 7


def build(fields: dict[str, Any], ctx: BuildContext | None = None) -> Any:
    kind = "decoder" if fields["type"] == "bert_decoder" else "encoder"
    entry = REGISTRY.get(kind, fields["type"])
    assert entry.config is not None and entry.factory is not None
    spec = entry.config.model_validate(fields)
    module = entry.factory(spec, ctx or BuildContext(REGISTRY))
    return module


@pytest.fixture
def decoder() -> BertTextDecoder:
    torch.manual_seed(0)
    module = build({"type": "bert_decoder", "config": {**TINY_BERT, "vocab_size": 50}}).eval()
    assert isinstance(module, BertTextDecoder)
    return module


def ids_and_mask() -> tuple[Tensor, Tensor]:
    ids = torch.randint(5, 50, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids)


def changed_at(ids: Tensor, position: int) -> Tensor:
    other = ids.clone()
    other[:, position] = (ids[:, position] + 7) % 45 + 5
    return other


def moved(before: Tensor, after: Tensor, position: int) -> bool:
    return bool((before[:, position] - after[:, position]).abs().max() > 1e-4)


def hidden(decoder: BertTextDecoder, ids: Tensor, mask: Tensor, **kwargs: Any) -> Tensor:
    return decoder(ids, mask, **kwargs).hidden


def test_causal_mode_hides_later_tokens(decoder: BertTextDecoder) -> None:
    ids, mask = ids_and_mask()
    before = hidden(decoder, ids, mask, mode="causal")
    after = hidden(decoder, changed_at(ids, 4), mask, mode="causal")
    assert not any(moved(before, after, p) for p in range(4))
    assert all(moved(before, after, p) for p in range(4, LENGTH))


def test_bidirectional_mode_sees_later_tokens(decoder: BertTextDecoder) -> None:
    ids, mask = ids_and_mask()
    before = hidden(decoder, ids, mask, mode="bidirectional")
    after = hidden(decoder, changed_at(ids, LENGTH - 1), mask, mode="bidirectional")
    assert all(moved(before, after, p) for p in range(LENGTH))


def test_prefix_mode_is_bidirectional_in_the_prefix_and_causal_after(
    decoder: BertTextDecoder,
) -> None:
    """Prefix of 3 (question), then 4 answer tokens (VALOR QA)."""
    ids, mask = ids_and_mask()
    prefix = torch.tensor([3, 3])
    before = hidden(decoder, ids, mask, mode="prefix", prefix_lengths=prefix)
    in_prefix = hidden(decoder, changed_at(ids, 2), mask, mode="prefix", prefix_lengths=prefix)
    assert all(moved(before, in_prefix, p) for p in range(LENGTH))  # token 2 seen by 0 and 1 too
    in_answer = hidden(decoder, changed_at(ids, 4), mask, mode="prefix", prefix_lengths=prefix)
    assert not any(moved(before, in_answer, p) for p in range(4))
    assert all(moved(before, in_answer, p) for p in range(4, LENGTH))


def test_self_attention_mask_combines_the_pattern_with_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    allowed = self_attention_mask(mask, "prefix", torch.tensor([2]))
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed[0], expected)
    with pytest.raises(ValueError, match="mode='prefix' needs prefix_lengths"):
        self_attention_mask(mask, "prefix")


def test_padding_and_an_absent_sample_give_finite_outputs(decoder: BertTextDecoder) -> None:
    ids, mask = ids_and_mask()
    mask[0, 5:] = 0
    mask[1] = 0  # a sample without text: no key to attend to
    condition_mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    output = decoder(ids, mask, torch.randn(2, 3, 32), condition_mask)
    assert torch.isfinite(output.hidden).all() and torch.isfinite(output.logits).all()
    before = decoder(ids, mask, mode="causal").hidden
    after = decoder(changed_at(ids, 6), mask, mode="causal").hidden
    torch.testing.assert_close(before[0, :5], after[0, :5])  # padding never leaks


def test_cross_attention_reads_the_unmasked_condition_only(decoder: BertTextDecoder) -> None:
    ids, mask = ids_and_mask()
    condition = torch.randn(2, 4, 32)
    condition_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    base = hidden(decoder, ids, mask, condition=condition, condition_mask=condition_mask)
    hidden_change = condition.clone()
    hidden_change[:, 3] = torch.randn(2, 32)
    same = hidden(decoder, ids, mask, condition=hidden_change, condition_mask=condition_mask)
    torch.testing.assert_close(same, base)
    visible_change = condition.clone()
    visible_change[:, 0] = torch.randn(2, 32)
    other = hidden(decoder, ids, mask, condition=visible_change, condition_mask=condition_mask)
    assert (other - base).abs().max() > 1e-4
    unimodal = hidden(decoder, ids, mask)
    assert (unimodal - base).abs().max() > 1e-4


def test_a_condition_of_another_width_gets_an_adapter() -> None:
    fields = {
        "type": "bert_decoder",
        "config": {**TINY_BERT, "vocab_size": 50},
        "condition_dim": 48,
    }
    decoder = build(fields)
    assert isinstance(decoder.condition_proj, nn.Linear)
    assert decoder.condition_proj.in_features == 48
    ids, mask = ids_and_mask()
    output = decoder(ids, mask, condition=torch.randn(2, 3, 48))
    assert output.logits.shape == (2, LENGTH, 50)


def tiny_spec(components: dict[str, Any]) -> Any:
    tree = {
        "model": {"components": components, "objectives": []},
        "data": {"sources": {"train": {"type": "jsonl", "path": "unused.jsonl"}}},
        "train": {"steps": 1},
    }
    return load_spec(tree, registry=REGISTRY)


def test_valor_decoder_shares_all_but_cross_attention_with_the_text_encoder() -> None:
    text = {"type": "bert", "config": {**TINY_BERT, "vocab_size": 60}}
    decoder_spec = {"type": "bert_decoder", "share_with": "text"}
    torch.manual_seed(0)
    model = build_model(tiny_spec({"decoder": decoder_spec, "text": text}).model, REGISTRY)
    encoder, decoder = model.components["text"], model.components["decoder"]
    assert decoder.bert.embeddings is encoder.bert.embeddings
    for own, shared in zip(decoder.bert.encoder.layer, encoder.bert.encoder.layer, strict=True):
        assert own.attention is shared.attention
        assert own.intermediate is shared.intermediate and own.output is shared.output
        assert not hasattr(shared, "crossattention") and hasattr(own, "crossattention")
    word_embeddings = encoder.bert.embeddings.word_embeddings.weight
    assert decoder.head.predictions.decoder.weight is word_embeddings
    shared_ids = {id(p) for p in encoder.parameters()}
    own = sum(p.numel() for p in decoder.parameters() if id(p) not in shared_ids)
    assert count_parameters(model) == count_parameters(encoder) + own
    model.eval()
    ids, mask = ids_and_mask()
    mask[1, 5:] = 0
    reference = encoder({"input_ids": ids, "attention_mask": mask}).sequence
    unimodal = decoder.encode_text(ids, mask).sequence
    torch.testing.assert_close(unimodal[mask.bool()], reference[mask.bool()])
    decoder(ids, mask, condition=torch.randn(2, 3, 32)).logits.sum().backward()
    attention = encoder.bert.encoder.layer[0].attention.self.query.weight
    assert attention.grad is not None and attention.grad.abs().sum() > 0


def test_omnivl_generation_decoder_shares_all_but_self_attention() -> None:
    """text (bert) <- align (all but cross-attention) <- gen (all but self-attention), as BLIP."""
    components = {
        "gen": {"type": "bert_decoder", "share_with": "align", "sharing": "all_but_self_attention"},
        "align": {"type": "bert_decoder", "share_with": "text"},
        "text": {"type": "bert", "config": {**TINY_BERT, "vocab_size": 60}},
    }
    model = build_model(tiny_spec(components).model, REGISTRY)
    text, align, gen = (model.components[n] for n in ("text", "align", "gen"))
    assert gen.bert.embeddings is align.bert.embeddings is text.bert.embeddings
    for g, a in zip(gen.bert.encoder.layer, align.bert.encoder.layer, strict=True):
        assert g.attention is not a.attention
        assert g.crossattention is a.crossattention
        assert g.intermediate is a.intermediate and g.output is a.output
    assert gen.head is align.head
    assert gen.head.predictions.decoder.weight is text.bert.embeddings.word_embeddings.weight


def test_sharing_none_with_a_target_is_rejected() -> None:
    components = {
        "text": {"type": "bert", "config": TINY_BERT},
        "decoder": {"type": "bert_decoder", "share_with": "text", "sharing": "none"},
    }
    with pytest.raises(SpecError) as info:
        tiny_spec(components)
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  model.components.decoder: sharing: none shares nothing, "
        "so share_with has no effect; remove share_with or choose all_but_cross_attention / "
        "all_but_self_attention"
    )


def test_sharing_with_a_bert_of_another_size_is_a_spec_error() -> None:
    components = {
        "text": {"type": "bert", "config": TINY_BERT},
        "decoder": {"type": "bert_decoder", "share_with": "text", "config": {"hidden_size": 64}},
    }
    spec = tiny_spec(components)
    with pytest.raises(SpecError) as info:
        build_model(spec.model, REGISTRY)
    assert str(info.value) == (
        "spec is invalid (1 problem):\n  model.components.decoder.share_with: cannot share "
        "parameters: hidden_size is 64 in the decoder and 32 in the component it shares with; "
        "leave the decoder's config empty to copy the shared BERT's"
    )


def decoder_config(**extra: Any) -> BertConfig:
    return BertConfig(**TINY_BERT, vocab_size=50, **extra)


def test_bert_decoder_loads_a_pretrained_lm_head_model(tmp_path: Path) -> None:
    saved = BertLMHeadModel(decoder_config(is_decoder=True, add_cross_attention=True))
    saved.save_pretrained(tmp_path)
    decoder = build({"type": "bert_decoder", "pretrained": str(tmp_path)})
    loaded = {
        **{f"bert.{k}": v for k, v in decoder.bert.state_dict().items()},
        **{f"cls.{k}": v for k, v in decoder.head.state_dict().items()},
    }
    expected = saved.state_dict()
    assert expected.keys() <= loaded.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_causal_and_prefix_masks_match_definitions() -> None:
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True] * 3]
    prefix = torch.tensor([2, 0])
    got = prefix_causal_mask(prefix, 4)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                both_prefix = i < prefix[b] and j < prefix[b]
                assert got[b, i, j].item() == (j <= i or both_prefix)


def test_bidirectional_and_additive_masks() -> None:
    allowed = bidirectional_mask(torch.tensor([[1, 1, 0]]))
    assert allowed.tolist() == [[[True, True, False]] * 3]
    additive = to_additive_mask(causal_mask(2), torch.float16)
    lowest = torch.finfo(torch.float16).min
    assert_close(additive, torch.tensor([[0.0, lowest], [0.0, 0.0]], dtype=torch.float16))
