"""COTS's token-level MVLM: CMLM and CMVM without a fusion module (SPEC §B8).

**CMLM** (``cmlm_loss``): 15% of the caption's maskable tokens (never [CLS], [SEP], [PAD] or the
other special tokens; at least one per caption that has any [I]) are corrupted BERT-style
(80% [MASK], 10% random, 10% kept [I]); the text component encodes the corrupted ids; at each
masked position ``h_j + W g^v`` goes through a BERT-vocabulary head (Linear, GELU, LayerNorm,
Linear; untied from the word embeddings [I]), where ``g^v`` is the online global image feature
of the clean pass, **detached** [I, SPEC B8], and ``W`` maps it to the text width.

**CMVM** (``cmvm_loss``): 40% of the image patches, in BEiT blocks (`block_mask_patches`), are
replaced by a learnable [MASK] embedding owned by this objective; the vision component encodes
the masked image; at each masked patch ``h_j + W' g^t`` (detached online global text feature)
goes through a head over the visual-token vocabulary, whose targets come from the
``visual_tokenizer``.

*How the patches are masked.* The vision component must be a ``vit`` (`ViTImageEncoder`).
It is built without HF's ``use_mask_token`` (so ``bool_masked_pos`` cannot be passed to it), and
adding a mask token to it afterwards would change its parameters behind other objectives' backs
(a momentum copy made earlier would no longer match). Instead, during the masked pass only, a
forward hook on ``vit.embeddings.patch_embeddings`` replaces the masked patch embeddings by the
[MASK] embedding: exactly what ``ViTEmbeddings`` does with ``bool_masked_pos`` (before [CLS] and
position embeddings are added). CMVM needs images (B, 3, H, W); a video batch contributes no
CMVM term.

*Visual tokenizer.* CMVM's targets come from a registered visual tokenizer
(`modaloom.objectives.visual_tokenizer`): ``kmeans`` (default, no download), ``dvae`` (DALL-E's
dVAE encoder, as in COTS) or ``vq`` (a VQ-VAE trained by the ``vq_tokenizer`` objective in a stage
of its own). Targets never carry a gradient.

*The other stream's global feature.* COTS's Eq. 1-3 add ``g`` to ``h_j`` and state no
stop-gradient, so by default (``detach_other_stream: false``) the CMLM/CMVM gradient reaches the
other stream through ``g``, as in the paper. ``detach_other_stream: true`` stops it (SPEC §B8's
"detached = safest" reading [I]).

Only samples with both modalities take part, restricted to ``features.shared["amf_keep"]`` when
an earlier ``cots_contrastive`` published it. A caption with no maskable token contributes no
CMLM term; no term at all gives a zero loss that keeps the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.errors import SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective, PixelGrid, VisualTokenizer
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference, VisualTokenizerSpec
from modaloom.objectives.conditioning import TextTokens, text_tokens
from modaloom.objectives.cots import AMF_KEEP_KEY
from modaloom.objectives.losses import zero_loss_like
from modaloom.objectives.masking import block_mask_patches, mask_tokens_for_mlm
from modaloom.objectives.visual_tokenizer import (
    KMeansTokenizerSpec,
    TokenizerField,
    build_visual_tokenizer,
    visual_tokenizer_config,
)

if TYPE_CHECKING:
    from transformers import ViTModel

__all__ = ["MVLM", "MVLMSpec"]

logger = logging.getLogger(__name__)


class MVLMSpec(ObjectiveSpec):
    """COTS's masked vision-language modelling: CMLM and CMVM (SPEC §B8)."""

    type: Literal["mvlm"] = "mvlm"
    vision: str = "vision"
    """Image component (a ``vit`` for CMVM)."""
    text: str = "text"
    """Text component."""
    cmlm: bool = True
    """Add the cross-modal masked language modelling term ``cmlm_loss``."""
    cmvm: bool = True
    """Add the cross-modal masked vision modelling term ``cmvm_loss``."""
    mlm_prob: float = Field(0.15, gt=0.0, le=1.0)
    """Fraction of caption tokens chosen for prediction (COTS: 15%)."""
    patch_mask_ratio: float = Field(0.4, gt=0.0, lt=1.0)
    """Fraction of patches masked block-wise (COTS: 40%)."""
    visual_tokenizer: TokenizerField = KMeansTokenizerSpec()
    """Where CMVM's targets come from: a registered visual tokenizer (``kmeans``, ``dvae``,
    ``vq``; see `modaloom.objectives.visual_tokenizer`); ``type`` defaults to ``kmeans``."""
    detach_other_stream: bool = False
    """Stop the gradient of CMLM/CMVM at the other stream's global feature ``g`` (COTS's Eq. 1-3
    state no stop-gradient: ``false``, the paper's behaviour)."""

    def references(self) -> list[Reference]:
        """``vision`` and ``text`` name components."""
        return [Reference("vision", self.vision), Reference("text", self.text)]

    @field_validator("visual_tokenizer", mode="before")
    @classmethod
    def _registered_tokenizer(cls, value: Any, info: ValidationInfo) -> VisualTokenizerSpec:
        return visual_tokenizer_config(value, info)

    @model_validator(mode="after")
    def _one_term(self) -> MVLMSpec:
        if not (self.cmlm or self.cmvm):
            raise ValueError("enable cmlm, cmvm or both")
        return self


class MVLM(Objective):
    """CMLM and CMVM. Returns ``cmlm_loss`` / ``cmvm_loss`` for the enabled terms.

    Args:
        config: the spec.
        dim_text: D of the text component.
        dim_vision: D of the vision component.
        tokens: special ids and vocabulary size of the text tokenizer.
        tokenizer: CMVM's visual tokenizer (``None`` without CMVM).
        patch: patch size p (CMVM).
    """

    def __init__(
        self,
        config: MVLMSpec,
        dim_text: int,
        dim_vision: int,
        tokens: TextTokens,
        tokenizer: VisualTokenizer | None = None,
        patch: int = 16,
    ) -> None:
        super().__init__()
        self.config, self.tokens, self.patch = config, tokens, patch
        self._warned_untrained = False
        if config.cmlm:
            self.image_to_text = nn.Linear(dim_vision, dim_text)
            self.mlm_head = nn.Sequential(
                nn.Linear(dim_text, dim_text),
                nn.GELU(),
                nn.LayerNorm(dim_text),
                nn.Linear(dim_text, tokens.vocab_size),
            )
        if config.cmvm:
            if tokenizer is None:
                raise ValueError("cmvm needs a visual tokenizer")
            self.mask_embedding = nn.Parameter(torch.zeros(dim_vision))
            nn.init.trunc_normal_(self.mask_embedding, std=0.02)
            self.text_to_image = nn.Linear(dim_text, dim_vision)
            self.mvm_head = nn.Linear(dim_vision, tokenizer.codes)
            self.tokenizer = tokenizer

    def other_stream(self, pooled: Tensor) -> Tensor:
        """The other stream's global feature ``g``, detached when ``detach_other_stream``."""
        return pooled.detach() if self.config.detach_other_stream else pooled

    def rows(self, features: FeatureCache) -> Tensor:
        """(b,) indices of the samples taking part (both modalities, AMF-kept)."""
        keep = features.present(self.config.vision) & features.present(self.config.text)
        amf = features.shared.get(AMF_KEEP_KEY)
        if amf is not None:
            keep = keep & amf.to(keep.device)
        return keep.nonzero()[:, 0]

    def cmlm(self, features: FeatureCache, rows: Tensor) -> Tensor | None:
        """Masked-token loss over the selected captions; ``None`` when nothing is masked."""
        cfg, tokens = self.config, self.tokens
        text = features.batch[features.model.input_field(cfg.text, features.batch)]
        ids, mask = text["input_ids"][rows], text["attention_mask"][rows]
        masked, labels = mask_tokens_for_mlm(
            ids,
            mask,
            tokens.mask,
            tokens.vocab_size,
            cfg.mlm_prob,
            tokens.special,
            replace_strategy="bert_80_10_10",
        )
        chosen = labels != -100
        if not bool(chosen.any()):
            return None
        hidden = features.components[cfg.text]({"input_ids": masked, "attention_mask": mask})
        image = self.image_to_text(self.other_stream(features[cfg.vision].pooled[rows]))  # (b, D_t)
        states = hidden.sequence + image[:, None]
        return F.cross_entropy(self.mlm_head(states[chosen]), labels[chosen])

    @contextmanager
    def masked_patches(self, vit: ViTModel, mask: Tensor) -> Iterator[None]:
        """Within the block, ``vit``'s patch embeddings at ``mask`` (B, N) are [MASK]."""

        def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            token = self.mask_embedding.to(output.dtype)
            return torch.where(mask[..., None], token, output)

        handle = vit.embeddings.patch_embeddings.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def targets(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """The visual tokenizer's codes (b, N); a trainable one that never trained warns once."""
        tokenizer = self.tokenizer
        untrained = tokenizer.trainable and not int(getattr(tokenizer, "trained_steps", 1))
        if untrained and not self._warned_untrained:
            self._warned_untrained = True
            logger.warning(
                "cmvm uses the codes of an untrained %s visual tokenizer; train it first in "
                "a stage whose source has objectives: [vq_tokenizer]",
                self.config.visual_tokenizer.type,
            )
        with torch.no_grad():
            return tokenizer(pixels, grid)

    def cmvm(self, features: FeatureCache, rows: Tensor) -> Tensor | None:
        """Masked-patch loss over the selected images; ``None`` for video batches."""
        cfg = self.config
        field = features.model.input_field(cfg.vision, features.batch)
        pixels = features.batch[field]["pixel_values"][rows]
        if pixels.ndim != 4:
            return None
        component = features.components[cfg.vision]
        grid_h, grid_w = pixels.shape[2] // self.patch, pixels.shape[3] // self.patch
        mask = block_mask_patches(
            rows.numel(), grid_h, grid_w, cfg.patch_mask_ratio, device=pixels.device
        )
        targets = self.targets(pixels, (grid_h, grid_w))  # (b, N)
        with self.masked_patches(cast("ViTModel", component.vit), mask):
            hidden = component({"pixel_values": pixels}).sequence[:, 1:]  # drop [CLS]
        text = self.text_to_image(self.other_stream(features[cfg.text].pooled[rows]))  # (b, D_v)
        states = hidden + text[:, None]
        return F.cross_entropy(self.mvm_head(states[mask]), targets[mask])

    def forward(self, features: FeatureCache) -> dict[str, Tensor]:
        cfg = self.config
        rows = self.rows(features)
        out: dict[str, Tensor] = {}
        for name, enabled, term in (("cmlm", cfg.cmlm, self.cmlm), ("cmvm", cfg.cmvm, self.cmvm)):
            if not enabled:
                continue
            loss = term(features, rows) if rows.numel() else None
            out[f"{name}_loss"] = loss if loss is not None else zero_loss_like(*self.parameters())
        return out


def make_mvlm(config: MVLMSpec, ctx: BuildContext) -> MVLM:
    """Registry factory of ``mvlm``."""
    from transformers import ViTModel  # lazily: the vit component has loaded it already

    where = "model.objectives.mvlm"
    tokenizer, patch = None, 16
    if config.cmvm:
        component = ctx.component(config.vision)
        vit = getattr(component, "vit", None)
        if not isinstance(vit, ViTModel) or getattr(component, "modality", None) != "image":
            raise SpecError(
                [
                    (
                        f"{where}.vision",
                        f"cmvm needs a vit component; {config.vision!r} is not one "
                        "(set cmvm: false for other encoders)",
                    )
                ]
            )
        size = vit.config.patch_size
        patch = int(size if isinstance(size, int) else size[0])
        grid = pixel_grid(ctx, patch, int(vit.config.num_channels))
        try:
            tokenizer = build_visual_tokenizer(config.visual_tokenizer, grid, ctx.registry)
        except SpecError as exc:
            located = [(f"{where}.{path}", problem) for path, problem in exc.problems]
            raise SpecError(located) from None
    return MVLM(
        config,
        ctx.output_dim(config.text),
        ctx.output_dim(config.vision),
        text_tokens(ctx, where),
        tokenizer,
        patch,
    )


def pixel_grid(ctx: BuildContext, patch: int, channels: int) -> PixelGrid:
    """The patch grid and the pixel normalisation of the ``image`` processor (ImageNet's,
    logged once at WARNING, when the model is built without one)."""
    pixels = getattr(ctx.processors.get("image"), "pixels", None)
    if pixels is None:
        logger.warning("mvlm: no image processor; the visual tokenizer assumes ImageNet's mean/std")
        return PixelGrid(patch, channels)
    return PixelGrid(patch, channels, tuple(pixels.mean), tuple(pixels.std))


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``mvlm``."""
    registry.add_objective(
        make_mvlm,
        MVLMSpec,
        description="COTS masked vision-language modelling (CMLM + CMVM) without fusion",
    )
