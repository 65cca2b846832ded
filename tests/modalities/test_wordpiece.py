"""The deterministic WordPiece learner: real subword pieces, the same vocabulary every time."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from modaloom.modalities.text_tokenizer import SPECIAL_TOKENS, train_wordpiece
from modaloom.modalities.wordpiece import initial_pieces, learn_pieces, merged_piece

CAPTIONS = [
    "a skateboarding dog jumps over the ramp",
    "a dog runs",
    "two dogs are skateboarding",
    "the skateboarder falls",
    "a cat sleeps on the skateboard",
] * 4


def test_pieces_merge_the_most_frequent_pair_first_ties_by_text() -> None:
    assert initial_pieces("dog") == ("d", "##o", "##g")
    assert merged_piece(("##bo", "##ard")) == "##board"
    # "ab" x3 and "cd" x3 tie: "a"+"##b" < "c"+"##d"; then "abx" x1 via ("ab", "##x")
    pieces = learn_pieces(Counter({"ab": 2, "abx": 1, "cd": 3}), budget=11)
    assert pieces == ["a", "b", "c", "d", "x", "##a", "##b", "##c", "##d", "##x", "ab"]
    assert learn_pieces(Counter({"ab": 2, "abx": 1, "cd": 3}), budget=100)[10:] == [
        "ab",
        "cd",
        "abx",
    ]


def test_words_become_subword_pieces_not_letters() -> None:
    tokenizer = train_wordpiece(CAPTIONS, vocab_size=120)
    assert tokenizer.tokenize("a skateboarding dog") == ["a", "skateboarding", "dog"]
    assert tokenizer.tokenize("skateboards") == ["skateboard", "##s"]
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(
        SPECIAL_TOKENS
    )


def test_the_vocabulary_is_the_same_in_another_process() -> None:
    """Unlike the `tokenizers` trainer, whose ties follow a per-process hash order."""
    counts = Counter(word for caption in CAPTIONS for word in caption.split())
    script = (
        "from collections import Counter; from modaloom.modalities.wordpiece import learn_pieces;"
        f"print(learn_pieces(Counter({dict(counts)!r}), 60))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert runs == {f"{learn_pieces(counts, 60)}\n"}
