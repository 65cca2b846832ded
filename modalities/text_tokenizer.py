"""Tokenizers of the text modality: a deterministic WordPiece trained from the captions
(`modaloom.modalities.wordpiece`), a
tokenizer directory (never running code it names), or the tokenizer of a pretrained text
component's checkpoint."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modaloom.core.errors import RemoteCodeError, SpecError
from modaloom.core.interfaces import PretrainedInput
from modaloom.modalities.hf_checkpoint import TOKENIZER_FILES, has_tokenizer
from modaloom.modalities.wordpiece import learn_pieces

__all__ = [
    "SPECIAL_TOKENS",
    "checkpoint_tokenizer",
    "load_tokenizer",
    "refuse_custom_code",
    "train_wordpiece",
    "wordpiece_vocabulary",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[ENC]", "[DEC]")


def wordpiece_vocabulary(texts: Any, vocab_size: int, lowercase: bool = True) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: the special tokens, then `learn_pieces` over the
    captions' words (every character alone and as a ``##`` continuation, then subword pieces
    merged by frequency, ties broken by their text), ``vocab_size`` tokens at most unless the
    characters alone need more."""
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces = learn_pieces(counts, vocab_size - len(SPECIAL_TOKENS))
    return {token: index for index, token in enumerate([*SPECIAL_TOKENS, *pieces])}


def train_wordpiece(texts: Any, vocab_size: int, lowercase: bool = True) -> PreTrainedTokenizerFast:
    """Build a BERT-style WordPiece tokenizer from an iterable of captions.

    The vocabulary holds [PAD]=0, [UNK], [CLS], [SEP], [MASK], [ENC] and [DEC] first.
    """
    vocab = wordpiece_vocabulary(texts, vocab_size, lowercase)
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
    )


def refuse_custom_code(path: str | Path) -> None:
    """Refuse a local directory whose configs name their own code (``auto_map``), which
    transformers would import and run with ``trust_remote_code=True``.

    Raises:
        RemoteCodeError: naming the file and the class.
    """
    for name in ("tokenizer_config.json", "config.json"):
        config = Path(path) / name
        try:
            auto_map = json.loads(config.read_text()).get("auto_map") if config.is_file() else None
        except (OSError, ValueError, AttributeError):
            continue  # transformers reports an unreadable config itself
        if auto_map:
            raise RemoteCodeError(
                f"refusing to load {path}: {name} names custom code (auto_map: "
                f"{json.dumps(auto_map)}); modaloom never runs code from a model or run "
                "directory (trust_remote_code=False)"
            )


def load_tokenizer(path: str | Path, where: str = "data.text.tokenizer") -> PreTrainedTokenizerFast:
    """Load a tokenizer directory (no network); adds [ENC]/[DEC] when missing, as BLIP does.

    Raises:
        RemoteCodeError: the directory names custom code (``auto_map``).
        SpecError: at ``where``: the directory has no tokenizer or it cannot be read.
    """
    refuse_custom_code(path)
    if not has_tokenizer(str(path)):
        files = ", ".join(TOKENIZER_FILES)
        raise SpecError([(where, f"cannot load a tokenizer from {path}: it has none of {files}")])
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise SpecError([(where, f"cannot load a tokenizer from {path}: {exc}")]) from None
    missing = [t for t in ("[ENC]", "[DEC]") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer  # type: ignore[no-any-return,return-value]


def checkpoint_tokenizer(pretrained: PretrainedInput) -> PreTrainedTokenizerFast:
    """The tokenizer saved with a pretrained text component's checkpoint.

    Raises:
        SpecError: at ``data.text.tokenizer``: the checkpoint has no tokenizer.
    """
    if not has_tokenizer(pretrained.checkpoint):
        problem = (
            f"{pretrained.where} {pretrained.checkpoint!r} has no tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES)}), and one trained from the captions would not match "
            "its word embeddings; set data.text.tokenizer to the tokenizer of that checkpoint"
        )
        raise SpecError([("data.text.tokenizer", problem)])
    return load_tokenizer(pretrained.checkpoint, where=pretrained.where)
