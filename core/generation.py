"""Greedy and beam search over a step function, shared by every text-generating objective.

A search never sees a model: it calls ``step(generated, origin)`` with the hypotheses still
running, ``generated`` (R, t) the tokens produced so far (t = 0 at the first step) and
``origin`` (R,) the sample each row continues, and reads back (R, V) next-token logits. Rows
of finished samples are not passed again, and a step indexes its per-sample tensors (the
decoder's condition, a question prefix) with ``origin``, which is how they are expanded per
beam. `decoder_step` builds such a step for any `Decoder` (the ``bert_decoder``):

* OmniVL's LM (SPEC §B5): rows ``[DEC] prompt w_1..w_t``, causal, the last position is read;
* VALOR's MGC (SPEC §A2, §B6): rows ``[CLS] w_1..w_t [MASK]``, causal, the [MASK] is read;
  for QA ``[CLS] question [SEP] a_1..a_t [MASK]`` with the prefix mask.

Conventions of both searches (`search`):

* the output is (B, T) token ids of the generated text only (no BOS, prompt or question),
  ending with [SEP] where the hypothesis stopped, right-padded with [PAD];
* ``max_length`` counts generated tokens, [SEP] included; ``min_length`` counts tokens before
  [SEP] (earlier, [SEP] is not allowed);
* the banned ids ([PAD], [CLS], [MASK], [ENC], [DEC]) are never emitted: their logits are set to
  -inf before the log-softmax, so scores are log-probabilities over the allowed tokens;
* beam search keeps ``num_beams`` running hypotheses, moves one that ends with [SEP] among the
  top ``num_beams`` candidates to the finished list, and stops a sample once it has
  ``num_beams`` finished ones (Hugging Face's ``early_stopping=True``) or at ``max_length``,
  where the running ones join the finished ones; the best finished one by
  ``sum log p / length ** length_penalty`` wins. With ``num_beams=1`` this is greedy search.

`TextGenerator` is what an objective offers evaluators (``captioning``, ``qa``): ``generate``
and ``answer`` built on `search`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from modaloom.core.interfaces import ConditionLayout, Decoder, DecoderMode

if TYPE_CHECKING:
    from modaloom.core.compose import FeatureCache

StepFn = Callable[[Tensor, Tensor], Tensor]
"""``step(generated (R, t) long, origin (R,) long) -> (R, V) next-token logits``."""


class SearchOptions(NamedTuple):
    """How to search.

    Attributes:
        num_beams: 1 = greedy search.
        max_length: generated tokens at most, [SEP] included.
        min_length: generated tokens before [SEP] at least.
        length_penalty: beam hypotheses are ranked by ``sum log p / length ** length_penalty``.
    """

    num_beams: int = 1
    max_length: int = 20
    min_length: int = 1
    length_penalty: float = 1.0


class SearchTokens(NamedTuple):
    """The ids a search treats specially.

    Attributes:
        sep: ends a hypothesis.
        pad: fills rows after their [SEP].
        banned: never generated.
    """

    sep: int
    pad: int
    banned: tuple[int, ...]


def allowed_log_probs(
    logits: Tensor, tokens: SearchTokens, position: int, min_length: int
) -> Tensor:
    """(R, V) logits -> float log-probabilities with banned ids (and early [SEP]) at -inf.

    Args:
        logits: (R, V) next-token scores.
        tokens: the special ids.
        position: 0-based index of the token being generated.
        min_length: tokens required before [SEP].
    """
    logits = logits.float().clone()
    logits[:, list(tokens.banned)] = float("-inf")
    if position < min_length:
        logits[:, tokens.sep] = float("-inf")
    return logits.log_softmax(dim=-1)


def greedy_search(
    step: StepFn,
    batch_size: int,
    tokens: SearchTokens,
    max_length: int = 20,
    min_length: int = 1,
    device: torch.device | None = None,
) -> Tensor:
    """Most likely next token at every step (see the module docstring for conventions).

    Returns:
        (B, T) long, T <= ``max_length``.
    """
    generated = torch.full((batch_size, 0), tokens.pad, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for position in range(max_length):
        active = (~finished).nonzero()[:, 0]
        logits = step(generated[active], active)
        chosen = allowed_log_probs(logits, tokens, position, min_length).argmax(dim=-1)
        column = torch.full_like(finished, tokens.pad, dtype=torch.long)
        column[active] = chosen
        generated = torch.cat([generated, column[:, None]], dim=1)
        finished[active] = chosen == tokens.sep
        if bool(finished.all()):
            break
    return generated


class _Beams:
    """Running and finished hypotheses of one sample."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.finished: list[tuple[float, list[int]]] = []
        self.stalled = False

    def add(self, tokens: list[int], score: float) -> None:
        normalised = score / max(len(tokens), 1) ** self.length_penalty
        self.finished.append((normalised, tokens))

    @property
    def done(self) -> bool:
        return self.stalled or len(self.finished) >= self.num_beams

    def best(self) -> list[int]:
        if not self.finished:
            return []
        return max(self.finished, key=lambda item: item[0])[1]


def _advance(
    beams: _Beams,
    sequences: Tensor,
    top_scores: list[float],
    top_index: list[int],
    vocab_size: int,
    sep: int,
) -> list[tuple[float, int, int]]:
    """Sort one sample's ranked candidates into finished ones and the next running beams.

    Returns:
        Up to ``num_beams`` ``(score, beam, token)`` continuations, best first.
    """
    running: list[tuple[float, int, int]] = []
    for rank, (score, flat) in enumerate(zip(top_scores, top_index, strict=True)):
        if score == float("-inf") or len(running) == beams.num_beams:
            break
        beam, token = divmod(flat, vocab_size)
        if token != sep:
            running.append((score, beam, token))
        elif rank < beams.num_beams:
            beams.add([*sequences[beam].tolist(), sep], score)
    beams.stalled = not running  # nothing left to extend (a tiny or fully banned vocabulary)
    return running


def beam_search(
    step: StepFn,
    batch_size: int,
    tokens: SearchTokens,
    num_beams: int = 3,
    max_length: int = 20,
    min_length: int = 1,
    length_penalty: float = 1.0,
    device: torch.device | None = None,
) -> Tensor:
    """Beam search (see the module docstring for conventions).

    Returns:
        (B, T) long, T <= ``max_length``.
    """
    k = num_beams
    hypotheses = [_Beams(k, length_penalty) for _ in range(batch_size)]
    sequences = torch.zeros((batch_size, k, 0), dtype=torch.long, device=device)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start, so the first step has no duplicates
    active = torch.arange(batch_size, device=device)
    for position in range(max_length):
        active = torch.tensor([b for b, h in enumerate(hypotheses) if not h.done], device=device)
        if active.numel() == 0:
            break
        origin = active.repeat_interleave(k)
        logits = step(sequences[active].flatten(0, 1), origin)
        log_probs = allowed_log_probs(logits, tokens, position, min_length)
        vocab = log_probs.shape[-1]
        total = scores[active, :, None] + log_probs.view(len(active), k, vocab)
        top_scores, top_index = total.flatten(1).topk(min(2 * k, k * vocab), dim=1)
        grown = torch.full((batch_size, k, position + 1), tokens.pad, device=device)
        new_scores = torch.full_like(scores, float("-inf"))
        for row, sample in enumerate(active.tolist()):
            running = _advance(
                hypotheses[sample],
                sequences[sample],
                top_scores[row].tolist(),
                top_index[row].tolist(),
                vocab,
                tokens.sep,
            )
            for slot, (score, beam, token) in enumerate(running):
                grown[sample, slot, :-1] = sequences[sample, beam]
                grown[sample, slot, -1] = token
                new_scores[sample, slot] = score
        sequences, scores = grown.long(), new_scores
    for sample in active.tolist():  # still running at max_length: the running beams compete
        for slot in range(k):
            if scores[sample, slot] > float("-inf"):
                hypotheses[sample].add(
                    sequences[sample, slot].tolist(), float(scores[sample, slot])
                )
    return pad_rows([beams.best() for beams in hypotheses], tokens.pad, device)


def pad_rows(rows: list[list[int]], pad: int, device: torch.device | None = None) -> Tensor:
    """Token lists as one right-padded (B, T) long tensor (T >= 1)."""
    width = max([1, *(len(row) for row in rows)])
    out = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def search(
    step: StepFn,
    batch_size: int,
    tokens: SearchTokens,
    options: SearchOptions | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Greedy search for ``num_beams=1``, beam search otherwise: (B, T) generated ids."""
    num_beams, max_length, min_length, length_penalty = options or SearchOptions()
    if num_beams < 1 or max_length < 1:
        raise ValueError(f"num_beams and max_length must be >= 1, got {num_beams}, {max_length}")
    if batch_size == 0:
        return torch.full((0, 1), tokens.pad, dtype=torch.long, device=device)
    if num_beams == 1:
        return greedy_search(step, batch_size, tokens, max_length, min_length, device)
    return beam_search(
        step, batch_size, tokens, num_beams, max_length, min_length, length_penalty, device
    )


# ------------------------------------------------------------------------------ generators


@runtime_checkable
class TextGenerator(Protocol):
    """An objective that generates text (``lm``, ``mgc``); evaluators pick objectives by this
    protocol."""

    @property
    def default_condition(self) -> list[str]:
        """Components conditioned on when the evaluator names none."""

    @property
    def answers_questions(self) -> bool:
        """Whether the objective is trained on QA pairs."""

    def generate(
        self,
        features: FeatureCache,
        condition: str | Sequence[str] | None = None,
        *,
        rows: Tensor | None = None,
        num_beams: int = 1,
        max_length: int = 20,
        min_length: int = 1,
        length_penalty: float = 1.0,
    ) -> Tensor:
        """(n, T) generated ids of the samples ``rows``."""

    def answer(
        self,
        features: FeatureCache,
        questions: Tensor,
        question_mask: Tensor,
        rows: Tensor,
        condition: str | Sequence[str] | None = None,
        *,
        max_length: int = 5,
    ) -> Tensor:
        """(Q, T) generated answer ids of questions (Q, Lq) about the samples ``rows``."""


# ------------------------------------------------------------------------------ decoder steps


def splice(
    prefix: Tensor, lengths: Tensor, generated: Tensor, tail: int | None, pad: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``prefix[:length] generated [tail]``, right-padded.

    Args:
        prefix: (R, P) left-aligned prefixes (BOS, prompt, question), padded after ``lengths``.
        lengths: (R,) prefix lengths.
        generated: (R, t) tokens generated so far.
        tail: an id appended after them (VALOR's [MASK]) or ``None``.
        pad: the padding id.

    Returns:
        ``(ids (R, L), attention_mask (R, L) long, read (R,))``, ``read`` being the position
        of each row's last token, whose output predicts the next token.
    """
    rows, width = prefix.shape
    steps = generated.shape[1]
    extra = 0 if tail is None else 1
    ids = torch.full((rows, width + steps + extra), pad, dtype=torch.long, device=prefix.device)
    ids[:, :width] = prefix
    offsets = torch.arange(steps, device=prefix.device)
    ids.scatter_(1, lengths[:, None] + offsets[None, :], generated)
    total = lengths + steps + extra
    if tail is not None:
        ids[torch.arange(rows, device=prefix.device), total - 1] = tail
    mask = torch.arange(ids.shape[1], device=prefix.device)[None, :] < total[:, None]
    return ids.masked_fill(~mask, pad), mask.long(), total - 1


def decoder_step(
    decoder: Decoder,
    prefix: Tensor,
    lengths: Tensor,
    condition: Tensor,
    condition_mask: Tensor,
    *,
    tail: int | None,
    mode: DecoderMode,
    pad: int,
    layout: ConditionLayout | None = None,
) -> StepFn:
    """A `StepFn` running ``decoder`` on ``prefix generated [tail]`` with cross-attention.

    Args:
        decoder: the text decoder.
        prefix: (n, P) per-sample prefixes; lengths (n,) their lengths.
        lengths: (n,) prefix lengths; also the bidirectional prefix sizes with ``mode="prefix"``.
        condition: (n, N, C) tokens to cross-attend to; condition_mask (n, N).
        condition_mask: (n, N) 1 for valid condition tokens.
        tail: id appended to every row and read (MGC's [MASK]); ``None`` reads the last token.
        mode: the decoder's self-attention pattern (``causal`` or ``prefix``).
        pad: the padding id.
        layout: how the condition's modalities are attended (`ConditionLayout`); ``None``:
            one attention over the whole condition.
    """

    def step(generated: Tensor, origin: Tensor) -> Tensor:
        ids, mask, read = splice(prefix[origin], lengths[origin], generated, tail, pad)
        prefix_lengths = lengths[origin] if mode == "prefix" else None
        hidden = decoder.hidden_states(
            ids, mask, condition[origin], condition_mask[origin], mode, prefix_lengths, layout
        )
        rows = torch.arange(ids.shape[0], device=ids.device)
        return decoder.lm_logits(hidden[rows, read])

    return step
