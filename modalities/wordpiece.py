"""A deterministic WordPiece vocabulary learner: subword pieces merged by frequency.

This is what the `tokenizers` ``WordPieceTrainer`` does (BPE merges of the most frequent
adjacent pair, continuation pieces written ``##piece``), with ties broken by the pair's text
instead of hash-map order: the trainer gave 4 different 90-token vocabularies for the same
captions in 6 processes here, so two runs with the same seed would not share token ids. Encoding
stays `tokenizers`' WordPiece model (greedy longest match first).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping

__all__ = ["initial_pieces", "learn_pieces"]

Pair = tuple[str, str]


def initial_pieces(word: str) -> tuple[str, ...]:
    """``"dog"`` -> ``("d", "##o", "##g")``: a word's characters as WordPiece pieces."""
    return (word[0], *(f"##{char}" for char in word[1:]))


def merged_piece(pair: Pair) -> str:
    """``("skate", "##board")`` -> ``"skateboard"``; ``("##bo", "##ard")`` -> ``"##board"``."""
    return pair[0] + pair[1].removeprefix("##")


class _PairIndex:
    """Pair counts over the words' current pieces, the words holding each pair, and a heap of
    (-count, pair) entries (stale entries are skipped when popped)."""

    def __init__(self, words: list[tuple[str, ...]], counts: list[int]) -> None:
        self.words, self.counts = words, counts
        self.pair_counts: Counter[Pair] = Counter()
        self.holders: defaultdict[Pair, set[int]] = defaultdict(set)
        for index, pieces in enumerate(words):
            self._add(index, pieces)
        self.heap = [(-count, pair) for pair, count in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _add(self, index: int, pieces: tuple[str, ...], sign: int = 1) -> set[Pair]:
        changed = set(itertools.pairwise(pieces))
        for pair in itertools.pairwise(pieces):
            self.pair_counts[pair] += sign * self.counts[index]
            if sign > 0:
                self.holders[pair].add(index)
        return changed

    def best(self) -> Pair | None:
        """The most frequent pair (ties: the smallest text), or None when no pair is left."""
        while self.heap:
            negative, pair = heapq.heappop(self.heap)
            if self.pair_counts.get(pair, 0) == -negative and negative < 0:
                return pair
        return None

    def merge(self, pair: Pair) -> None:
        """Replace every occurrence of ``pair`` by its merged piece and update the counts."""
        piece, changed = merged_piece(pair), set()
        for index in sorted(self.holders.pop(pair, set())):
            pieces = self.words[index]
            changed |= self._add(index, pieces, sign=-1)
            out: list[str] = []
            position = 0
            while position < len(pieces):
                if pieces[position : position + 2] == pair:
                    out.append(piece)
                    position += 2
                else:
                    out.append(pieces[position])
                    position += 1
            self.words[index] = tuple(out)
            changed |= self._add(index, self.words[index])
        for other in sorted(changed):
            if self.pair_counts[other] > 0:
                heapq.heappush(self.heap, (-self.pair_counts[other], other))


def learn_pieces(word_counts: Mapping[str, int], budget: int) -> list[str]:
    """The pieces of a WordPiece vocabulary learned from word frequencies.

    Args:
        word_counts: normalised, pre-tokenised words and how often each occurs.
        budget: how many pieces at most; the characters are always all kept.

    Returns:
        Every character alone and as a ``##`` continuation (sorted), then merged pieces in the
        order they were learned; the same counts always give the same list.
    """
    chars = sorted({char for word in word_counts for char in word})
    pieces = [*chars, *(f"##{char}" for char in chars)]
    known = set(pieces)
    words = sorted(word_counts)
    index = _PairIndex([initial_pieces(word) for word in words], [word_counts[w] for w in words])
    while len(pieces) < budget and (pair := index.best()) is not None:
        index.merge(pair)
        piece = merged_piece(pair)
        if piece not in known:
            known.add(piece)
            pieces.append(piece)
    return pieces
