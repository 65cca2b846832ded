"""The contracts between the runner and plugins: processors, encoders, objectives, sources.

Batch layout (what the data layer yields and the model consumes)::

    {
      "__keys__": list[str],                       # sample keys, for logging
      "__meta__": list[dict],                      # each sample's raw non-binary fields (captions,
                                                   # QA pairs, ...), for evaluators
      "__skipped__": int,                          # corrupt samples dropped while building it
      "__index__": int,                            # evaluation only: the batch's position in
                                                   # the source, for gathering across ranks
      "text":  {"input_ids": (B, L), "attention_mask": (B, L), "present": (B,)},
      "image": {"pixel_values": (B, 3, H, W), "present": (B,)},
      "labels": (B,) long, -1 where a sample has no class label (optional),
      ...                                           # one entry per modality field present
    }

A modality field missing from every sample of a batch is absent from the batch; a field missing
from some samples is zero-filled there and its ``present`` mask is False.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from modaloom.core.errors import ExportError

if TYPE_CHECKING:
    from modaloom.core.compose import FeatureCache

Batch = dict[str, Any]
RawSample = dict[str, Any]
"""A sample as a source yields it: ``{"__key__": str, "<modality>": bytes | str | path, ...}``."""


class EncoderOutput(NamedTuple):
    """What every encoder returns.

    Attributes:
        sequence: token features, (B, N, D).
        pooled: one global feature per sample, (B, D).
        mask: (B, N) with 1 for valid tokens, or ``None`` when all are valid.
    """

    sequence: Tensor
    pooled: Tensor
    mask: Tensor | None


@dataclass(frozen=True)
class PretrainedInput:
    """A component that starts from a checkpoint (``pretrained:``) and reads a batch field.

    Attributes:
        component: its name under ``model.components``.
        checkpoint: its ``pretrained`` value (a directory or a cached model name).
    """

    component: str
    checkpoint: str

    @property
    def where(self) -> str:
        """The spec path of its ``pretrained`` field."""
        return f"model.components.{self.component}.pretrained"


@dataclass
class DataContext:
    """What processor factories may use.

    Attributes:
        artifact_dir: a directory where a processor saves learned state (a trained tokenizer)
            and from which it reloads it on resume or evaluation; ``None`` keeps nothing.
        texts: returns an iterator over the training captions (for training a tokenizer).
        pretrained: per batch field, the first component (in spec order) that reads it and
            starts from a checkpoint; the field's processor takes what the data spec leaves
            unset from that checkpoint (the tokenizer; pixel mean, std and size).
    """

    artifact_dir: Path | None = None
    texts: Callable[[], Iterator[str]] = lambda: iter(())
    pretrained: Mapping[str, PretrainedInput] = field(default_factory=dict)


class Processor(ABC):
    """Decodes and transforms one modality field of a raw sample, then collates a batch."""

    @abstractmethod
    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        """Decode one sample's field.

        Raises:
            MediaDecodeError: the value is corrupt or unsupported.
        """

    @abstractmethod
    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        """Stack per-sample outputs (``None`` = missing) into a batch with a ``present`` mask."""

    def save(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Persist learned state (a trained tokenizer) so evaluation and resume reuse it."""

    def export(self, directory: Path) -> list[str]:
        """Write this processor's settings into ``directory`` in Hugging Face's format (a
        tokenizer's files, ``preprocessor_config.json``), so that a model exported beside them
        is used with the same inputs (``modaloom export``).

        Returns:
            The names of the files written; none by default.
        """
        return []


class Encoder(nn.Module):
    """Base of encoder components: maps a modality's collated tensors to an `EncoderOutput`.

    Attributes:
        modality: the batch field it reads by default (``text``, ``image``, ...).
        output_dim: D of its `EncoderOutput`.
    """

    modality: str = ""
    output_dim: int = 0

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def stage_actions(self) -> dict[str, Callable[[], None]]:
        """Named in-place operations a training stage may run when it starts (``inflate``)."""
        return {}

    export_class: str | None = None
    """The Hugging Face `transformers` class that loads `export_pretrained`'s directory
    (``ViTModel``); ``None``: this component has no such layout."""

    def save_config(self, directory: Path) -> None:
        """Write the configuration that rebuilds this component's architecture as it is built
        now (``config.json``), without weights: a run keeps it so that it never reads the
        component's ``pretrained`` checkpoint again (`modaloom.core.portable`).

        Raises:
            ExportError: this component cannot be rebuilt without its checkpoint (the default).
        """
        raise ExportError(f"{type(self).__name__} cannot save its configuration")

    def export_pretrained(self, directory: Path) -> None:
        """Write this component's configuration and weights in its library's own layout, which
        `export_class`'s ``from_pretrained`` loads with every weight equal.

        Raises:
            ExportError: this component has no such layout (the default).
        """
        raise ExportError(f"{type(self).__name__} has no Hugging Face layout")


class ConditionLayout(NamedTuple):
    """How a decoder cross-attends to a condition made of several modalities' sequences
    (VALOR's Tab. 11 variants; the concatenated condition with one attention is ``None``).

    Attributes:
        segments: the lengths along N of the modalities, in order (they sum to N).
        combine: ``sequential``: each layer's cross-attention attends to the first modality,
            its output to the second, and so on; ``parallel``: it attends to each modality from
            the same input and the outputs are averaged.
    """

    segments: tuple[int, ...]
    combine: Literal["sequential", "parallel"]


DecoderMode = Literal["causal", "bidirectional", "prefix"]
"""Self-attention pattern of a text decoder: ``causal`` (j <= i), ``bidirectional`` (all real
keys) or ``prefix`` (the first ``prefix_lengths`` tokens see each other, the rest is causal)."""


class DecoderOutput(NamedTuple):
    """What a `Decoder` returns.

    Attributes:
        hidden: last hidden states, (B, L, D).
        logits: LM head scores over the vocabulary, (B, L, V).
    """

    hidden: Tensor
    logits: Tensor


@runtime_checkable
class Decoder(Protocol):
    """A text decoder component with cross-attention and an LM head (``bert_decoder``).

    Objectives (LM, MGC, ITM, MGA) and generation use decoders only through this contract.

    Attributes:
        output_dim: D of its hidden states.
        vocab_size: V of its LM head.
        condition_dim: width C of the condition it cross-attends to.
    """

    output_dim: int
    vocab_size: int
    condition_dim: int

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        condition: Tensor | None = None,
        condition_mask: Tensor | None = None,
        mode: DecoderMode = "causal",
        prefix_lengths: Tensor | None = None,
        layout: ConditionLayout | None = None,
    ) -> Tensor:
        """(B, L, D) last hidden states of ``input_ids`` (B, L) attending to ``condition``
        (B, N, C) where ``condition_mask`` (B, N) is 1; no cross-attention when ``None``.
        ``layout`` splits the condition into modalities attended one after the other or in
        parallel; ``None``: one attention over the whole (concatenated) condition."""

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """LM head on any (..., D) hidden states -> (..., V)."""

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        condition: Tensor | None = None,
        condition_mask: Tensor | None = None,
        mode: DecoderMode = "causal",
        prefix_lengths: Tensor | None = None,
    ) -> DecoderOutput:
        """Hidden states (B, L, D) and LM logits (B, L, V)."""

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> EncoderOutput:
        """The unimodal text path: bidirectional, no cross-attention; pooled = first token."""


@runtime_checkable
class TextCodec(Protocol):
    """What objectives and evaluators need of the text processor (``data.text``): its special
    token ids, vocabulary size, and decoding of generated ids back to strings."""

    pad_id: int
    vocab_size: int

    def token_id(self, token: str) -> int:
        """Id of a special token such as ``[SEP]``."""

    def encode_words(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens (a prompt, a question)."""

    def decode(self, ids: Tensor) -> list[str]:
        """(B, T) ids -> B strings, special tokens dropped."""

    def process(
        self, value: Any, *, key: str, train: bool, rng: random.Random
    ) -> dict[str, Tensor]:
        """Tokenize one text value (a caption, or a QA pair as a dict)."""

    def collate(self, items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        """Stack tokenized items into a padded batch."""


class Objective(nn.Module):
    """Base of objectives: reads features from the cache and returns ``*_loss`` terms."""

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called once after every optimizer step (momentum updates and the like)."""

    def retrieval_side(
        self, components: tuple[str, ...], features: FeatureCache
    ) -> dict[str, Tensor] | None:
        """Retrieval representation of one side (e.g. ``("vision", "audio")``), or ``None``
        when this objective cannot embed that combination.

        Returns:
            Tensors with the batch as first dimension (e.g. ``{"embedding": (B, E)}``); tensors
            with a second dimension of varying length are padded with zeros when batches are
            concatenated, so masks must be included as 0/1 tensors.
        """
        return None

    def retrieval_scores(self, query: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        """Scores (Q, T) between two `retrieval_side` outputs; dot product of embeddings."""
        return query["embedding"] @ target["embedding"].T


@dataclass(frozen=True)
class PixelGrid:
    """What a visual tokenizer is built for: the vision component's patches and its pixels.

    Attributes:
        patch: the ViT's patch side p; the tokenizer gives one code per p x p patch.
        channels: image channels.
        mean: per-channel mean the images were normalised with (``data.image``).
        std: per-channel std the images were normalised with.
    """

    patch: int
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


class VisualTokenizer(nn.Module):
    """Base of visual tokenizers: discrete targets of masked image modelling (COTS's CMVM).

    Attributes:
        codes: the size of the code vocabulary K.
        trainable: its codes are learnt by an objective of its own (``vq``); the others are
            fixed (``dvae``) or fitted without gradients (``kmeans``).
    """

    codes: int = 0
    trainable: bool = False

    def forward(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:  # pragma: no cover
        """Codes of every patch: (B, C, H, W) normalised pixels -> (B, grid_h * grid_w) long,
        row-major (the ViT's patch order)."""
        raise NotImplementedError


class Source(ABC):
    """Yields raw samples. Map-style sources implement ``__len__`` and ``__getitem__``."""

    def texts(self, limit: int | None = None) -> Iterator[str]:
        """Captions of this source, for training a tokenizer; decodes no media."""
        for index, sample in enumerate(self.iter_raw()):
            if limit is not None and index >= limit:
                return
            yield from text_strings(sample.get("text"))

    @abstractmethod
    def iter_raw(self) -> Iterator[RawSample]:
        """Every sample once, in storage order."""

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} is not map-style")

    def __getitem__(self, index: int) -> RawSample:
        raise TypeError(f"{type(self).__name__} is not map-style")

    @property
    def is_map_style(self) -> bool:
        """Whether samples can be fetched by index (needed for exact, cheap resume)."""
        return type(self).__getitem__ is not Source.__getitem__

    def split_stream(self, reader: int, readers: int, skip: int = 0) -> Iterator[RawSample] | None:
        """One reader's own share of a streaming source, epoch after epoch, or ``None`` when the
        source cannot be split (then every reader reads everything and keeps its share).

        The shares of readers ``0..readers-1`` together hold each sample once per epoch
        (webdataset: shards split by rank and worker). Calling this must be cheap (reading
        starts at the first ``next``) but should raise at once what is sure to fail.

        Args:
            reader: this reader, ``rank * workers + worker slot``.
            readers: processes x DataLoader workers.
            skip: samples of this share to pass over first, without decoding them (resume).

        Returns:
            An endless iterator, or ``None`` (the default).

        Raises:
            DataError: the source cannot be split among ``readers`` readers.
        """
        return None


def text_strings(value: Any) -> Iterator[str]:
    """Every string of a text field: a caption, a list of captions, or QA pairs
    (``{"question": ..., "answer": ...}``), for training a tokenizer."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from text_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from text_strings(item)


def zeros_like_first(items: list[dict[str, Tensor] | None]) -> dict[str, Tensor]:
    """A zero-filled template for missing entries, shaped like the first present item."""
    template = next(item for item in items if item is not None)
    return {name: torch.zeros_like(value) for name, value in template.items()}
