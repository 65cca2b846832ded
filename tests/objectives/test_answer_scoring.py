"""Answer-list QA: `sequence_log_probs` by brute force, and ``lm`` / ``mgc`` ``score_answers``
against the decoder run by hand (one teacher-forced pass for LM, a [MASK] per step for MGC)."""

from __future__ import annotations

import torch
from torch import Tensor

from modaloom.core.answer_scoring import AnswerScorer, pad_answers, sequence_log_probs
from modaloom.core.compose import FeatureCache, LoomModel
from modaloom.core.generation import SearchTokens, allowed_log_probs
from modaloom.objectives.lm import LanguageModeling
from modaloom.objectives.mgc import MGC
from modaloom.plugins.evaluators.qa import encode_questions
from modaloom.tests.objectives.captioning_models import PROCESSOR, batch, build

TOKENS = SearchTokens(sep=1, pad=0, banned=(0, 4))


def fake_step(generated: Tensor, origin: Tensor) -> Tensor:
    """Logits over 6 ids depending on the sample, the step and the last token."""
    last = generated[:, -1] if generated.shape[1] else torch.zeros_like(origin)
    row = origin.float()[:, None] + generated.shape[1] * 0.5 + last.float()[:, None] * 0.25
    return torch.sin(row * torch.arange(1, 7, dtype=torch.float)[None, :])


def test_sequence_log_probs_sums_each_token_given_the_ones_before() -> None:
    continuations = torch.tensor([[2, 3, 1], [5, 1, 0], [3, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    origin = torch.tensor([0, 0, 2])
    got = sequence_log_probs(fake_step, origin, continuations, mask, TOKENS)
    for row in range(3):
        expected = 0.0
        for position in range(int(mask[row].sum())):
            prefix = continuations[row : row + 1, :position]
            logits = fake_step(prefix, origin[row : row + 1])
            log_probs = allowed_log_probs(logits, TOKENS, position, min_length=1)
            expected += float(log_probs[0, continuations[row, position]])
        assert abs(float(got[row]) - expected) < 1e-5
    assert pad_answers([[2, 1], [5, 6, 1]], pad=0)[0].tolist() == [[2, 1, 0], [5, 6, 1]]
    assert pad_answers([[2, 1], [5, 6, 1]], pad=0)[1].tolist() == [[1, 1, 0], [1, 1, 1]]


QUESTIONS = ["which color", "a red square"]
ANSWERS = ["red", "blue circle", "two"]


def candidates() -> tuple[Tensor, Tensor]:
    sep = PROCESSOR.token_id("[SEP]")
    return pad_answers([[*PROCESSOR.encode_words(a), sep] for a in ANSWERS], PROCESSOR.pad_id)


def banned_log_softmax(logits: Tensor, model: LoomModel, first: bool) -> Tensor:
    tokens = model.objectives[0].tokens.search  # type: ignore[union-attr]
    return allowed_log_probs(logits, tokens, 0 if first else 1, min_length=1)


def test_lm_scores_an_answer_by_one_teacher_forced_pass() -> None:
    spec = {"type": "lm", "decoder": "decoder", "condition": "image", "prompt": "a picture of"}
    model = build(spec, ("text", "decoder", "image"))
    lm = model.objectives[0]
    assert isinstance(lm, LanguageModeling) and isinstance(lm, AnswerScorer)
    features = FeatureCache(model, batch("image"))
    questions, question_mask = encode_questions(PROCESSOR, QUESTIONS)
    rows = torch.tensor([2, 0])
    answers, answer_mask = candidates()
    with torch.no_grad():
        got = lm.score_answers(features, questions, question_mask, rows, answers, answer_mask)
    assert got.shape == (2, 3)
    decoder = model.components["decoder"]
    for q in range(2):
        length = int(question_mask[q].sum())
        prefix, _ = lm.bos_prefix(questions[q : q + 1, :length], question_mask[q : q + 1, :length])
        for c in range(3):
            answer = answers[c, : int(answer_mask[c].sum())]
            ids = torch.cat([prefix[0], answer])[None]
            condition, condition_mask = lm.condition(features, ["image"], rows[q : q + 1])
            with torch.no_grad():
                mask = torch.ones_like(ids)
                logits = decoder(ids, mask, condition, condition_mask, mode="causal").logits[0]
            start = prefix.shape[1]
            expected = sum(
                float(banned_log_softmax(logits[start + t - 1][None], model, t == 0)[0, token])
                for t, token in enumerate(answer.tolist())
            )
            assert abs(float(got[q, c]) - expected) < 1e-4


def test_mgc_scores_each_token_at_a_mask_after_the_question() -> None:
    spec = {"type": "mgc", "decoder": "decoder", "groups": [["text", "image"]], "qa": True}
    model = build(spec, ("text", "decoder", "image"))
    mgc = model.objectives[0]
    assert isinstance(mgc, MGC) and isinstance(mgc, AnswerScorer)
    features = FeatureCache(model, batch("image"))
    questions, question_mask = encode_questions(PROCESSOR, QUESTIONS)
    rows = torch.tensor([1, 3])
    answers, answer_mask = candidates()
    with torch.no_grad():
        got = mgc.score_answers(features, questions, question_mask, rows, answers, answer_mask)
    decoder = model.components["decoder"]
    mask_id = PROCESSOR.token_id("[MASK]")
    for q in range(2):
        question = questions[q, : int(question_mask[q].sum())]
        condition, condition_mask = mgc.condition(features, ["image"], rows[q : q + 1])
        for c in range(3):
            answer = answers[c, : int(answer_mask[c].sum())].tolist()
            expected = 0.0
            for t, token in enumerate(answer):
                ids = torch.cat([question, torch.tensor([*answer[:t], mask_id])])[None]
                prefix = torch.tensor([len(question)])
                with torch.no_grad():
                    mask = torch.ones_like(ids)
                    hidden = decoder.hidden_states(
                        ids, mask, condition, condition_mask, "prefix", prefix
                    )
                    logits = decoder.lm_logits(hidden[:, -1])
                expected += float(banned_log_softmax(logits, model, t == 0)[0, token])
            assert abs(float(got[q, c]) - expected) < 1e-4
