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

*Visual tokenizer.* COTS uses a frozen DALL-E dVAE (8192 codes). ``{type: dvae}`` is a reserved
slot that is rejected with a clear message until a pretrained dVAE is provided. The default
``{type: kmeans, codes: 512}`` (`KMeansPatchTokenizer`) needs no download: a patch's code is its
nearest centroid (Euclidean) in the space of its raw, data-normalised pixels (3 x p x p values).
Centroids are buffers (checkpointed): initialised from random patches of the first training
batch (seeded), then refined by mini-batch k-means (Sculley, 2010: per-centroid learning rate
``1 / count``) on each of the first ``fit_steps`` training batches, then frozen so the targets
stop moving. Under DDP the buffers are broadcast from rank 0 at every forward, so all ranks
follow rank 0's fit.

Only samples with both modalities take part, restricted to ``features.shared["amf_keep"]`` when
an earlier ``cots_contrastive`` published it. A caption with no maskable token contributes no
CMLM term; no term at all gives a zero loss that keeps the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers import ViTModel

from modaloom.core.compose import BuildContext, FeatureCache
from modaloom.core.errors import SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Objective
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec, Reference, Seed, Spec
from modaloom.objectives.conditioning import TextTokens, text_tokens
from modaloom.objectives.cots import AMF_KEEP_KEY
from modaloom.objectives.losses import zero_loss_like
from modaloom.objectives.masking import block_mask_patches, mask_tokens_for_mlm

__all__ = ["MVLM", "DVAETokenizerSpec", "KMeansPatchTokenizer", "KMeansTokenizerSpec", "MVLMSpec"]

DVAE_MESSAGE = (
    "not implemented: provide a pretrained dVAE (COTS uses DALL-E's, 8192 codes) as a visual "
    "tokenizer plugin, or use {type: kmeans, codes: 512}"
)


class KMeansTokenizerSpec(Spec):
    """Codes = nearest centroid of raw patch pixels, fitted online (no download)."""

    type: Literal["kmeans"] = "kmeans"
    codes: int = Field(512, ge=2)
    """Size of the visual-token vocabulary (centroids)."""
    fit_steps: int = Field(1000, ge=0)
    """Training batches that refine the centroids before they are frozen."""
    seed: Seed = 0
    """Seed of the initial choice of patches."""


class DVAETokenizerSpec(Spec):
    """A pretrained dVAE tokenizer (reserved; not implemented)."""

    type: Literal["dvae"] = "dvae"
    path: str | None = None
    """Directory of the pretrained dVAE."""

    @model_validator(mode="after")
    def _not_implemented(self) -> DVAETokenizerSpec:
        raise ValueError(DVAE_MESSAGE)


VisualTokenizerSpec = Annotated[
    KMeansTokenizerSpec | DVAETokenizerSpec, Field(discriminator="type")
]


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
    visual_tokenizer: VisualTokenizerSpec = KMeansTokenizerSpec()
    """Where CMVM's targets come from (see `modaloom.objectives.mvlm`); ``type`` defaults to
    ``kmeans``."""

    def references(self) -> list[Reference]:
        """``vision`` and ``text`` name components."""
        return [Reference("vision", self.vision), Reference("text", self.text)]

    @model_validator(mode="before")
    @classmethod
    def _kmeans_by_default(cls, data: Any) -> Any:
        tokenizer = data.get("visual_tokenizer") if isinstance(data, dict) else None
        if isinstance(tokenizer, dict) and "type" not in tokenizer:
            data = {**data, "visual_tokenizer": {"type": "kmeans", **tokenizer}}
        return data

    @model_validator(mode="after")
    def _one_term(self) -> MVLMSpec:
        if not (self.cmlm or self.cmvm):
            raise ValueError("enable cmlm, cmvm or both")
        return self


def patchify(pixels: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p) row-major patches (the ViT's patch order)."""
    return F.unfold(pixels, kernel_size=patch, stride=patch).transpose(1, 2)


class KMeansPatchTokenizer(nn.Module):
    """Nearest-centroid codes of raw patches, centroids fitted by online mini-batch k-means.

    Args:
        codes: K.
        patch_dim: C*p*p.
        fit_steps: training calls that update the centroids.
        seed: seeds the choice of initial patches.
    """

    centroids: Tensor
    counts: Tensor
    steps: Tensor

    def __init__(self, codes: int, patch_dim: int, fit_steps: int, seed: int = 0) -> None:
        super().__init__()
        self.fit_steps, self.seed = fit_steps, seed
        self.register_buffer("centroids", torch.zeros(codes, patch_dim))
        self.register_buffer("counts", torch.zeros(codes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def assign(self, patches: Tensor) -> Tensor:
        """(M, d) -> (M,) index of the nearest centroid."""
        centroids = self.centroids.to(patches.dtype)
        distances = (
            patches.pow(2).sum(1, keepdim=True)
            - 2 * patches @ centroids.T
            + centroids.pow(2).sum(1)[None]
        )
        return distances.argmin(dim=1)

    @torch.no_grad()
    def fit_step(self, patches: Tensor) -> None:
        """One mini-batch k-means update with (M, d) patches (the first call initialises)."""
        patches = patches.float()
        if int(self.steps) == 0:
            generator = torch.Generator().manual_seed(self.seed)
            pick = torch.randint(patches.shape[0], (self.centroids.shape[0],), generator=generator)
            self.centroids.copy_(patches[pick.to(patches.device)])
        codes = self.assign(patches)
        sums = torch.zeros_like(self.centroids).index_add_(0, codes, patches)
        hits = torch.bincount(codes, minlength=self.centroids.shape[0]).to(self.counts)
        self.counts.add_(hits)
        used = hits > 0
        means = sums[used] / hits[used, None]
        rate = (hits[used] / self.counts[used])[:, None]
        self.centroids[used] += rate * (means - self.centroids[used])
        self.steps.add_(1)

    @torch.no_grad()
    def forward(self, pixels: Tensor, patch: int) -> Tensor:
        """Codes of every patch, (B, N) long; refines the centroids first while fitting."""
        patches = patchify(pixels.float(), patch)
        flat = patches.flatten(0, 1)
        if int(self.steps) == 0 or (self.training and int(self.steps) < self.fit_steps):
            self.fit_step(flat)
        return self.assign(flat).view(patches.shape[:2])


class MVLM(Objective):
    """CMLM and CMVM. Returns ``cmlm_loss`` / ``cmvm_loss`` for the enabled terms.

    Args:
        config: the spec.
        dim_text: D of the text component.
        dim_vision: D of the vision component.
        tokens: special ids and vocabulary size of the text tokenizer.
        patch: patch size p (CMVM).
        channels: image channels (CMVM).
    """

    def __init__(
        self,
        config: MVLMSpec,
        dim_text: int,
        dim_vision: int,
        tokens: TextTokens,
        patch: int = 16,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.config, self.tokens, self.patch = config, tokens, patch
        if config.cmlm:
            self.image_to_text = nn.Linear(dim_vision, dim_text)
            self.mlm_head = nn.Sequential(
                nn.Linear(dim_text, dim_text),
                nn.GELU(),
                nn.LayerNorm(dim_text),
                nn.Linear(dim_text, tokens.vocab_size),
            )
        if config.cmvm:
            tokenizer = config.visual_tokenizer
            assert isinstance(tokenizer, KMeansTokenizerSpec)
            self.mask_embedding = nn.Parameter(torch.zeros(dim_vision))
            nn.init.trunc_normal_(self.mask_embedding, std=0.02)
            self.text_to_image = nn.Linear(dim_text, dim_vision)
            self.mvm_head = nn.Linear(dim_vision, tokenizer.codes)
            self.tokenizer = KMeansPatchTokenizer(
                tokenizer.codes, channels * patch * patch, tokenizer.fit_steps, tokenizer.seed
            )

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
        image = self.image_to_text(features[cfg.vision].pooled[rows].detach())  # (b, D_t)
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
        targets = self.tokenizer(pixels, self.patch)  # (b, N)
        with self.masked_patches(cast(ViTModel, component.vit), mask):
            hidden = component({"pixel_values": pixels}).sequence[:, 1:]  # drop [CLS]
        text = self.text_to_image(features[cfg.text].pooled[rows].detach())  # (b, D_v)
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
    where = "model.objectives.mvlm"
    if not isinstance(config.visual_tokenizer, KMeansTokenizerSpec):  # pragma: no cover
        raise SpecError([(f"{where}.visual_tokenizer", DVAE_MESSAGE)])
    patch, channels = 16, 3
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
        channels = int(vit.config.num_channels)
    return MVLM(
        config,
        ctx.output_dim(config.text),
        ctx.output_dim(config.vision),
        text_tokens(ctx, where),
        patch,
        channels,
    )


@hookimpl
def modaloom_register_objectives(registry: Registry) -> None:
    """Register ``mvlm``."""
    registry.add_objective(
        make_mvlm,
        MVLMSpec,
        description="COTS masked vision-language modelling (CMLM + CMVM) without fusion",
    )
