"""Pure-tensor objective functions (SPEC section B): the stable functional API, re-exported.

Each function lives beside the objective that uses it and is re-exported here, so
``from modaloom.objectives import functional as MF`` reaches them all:

=================================  ====================================================
``contrastive_loss``               `modaloom.objectives.contrastive` (``itc``)
``contrastive_loss_with_queue``,   `modaloom.objectives.queue_contrastive`
``positive_targets``,              (``itc_queue``, ``univlc``)
``remap_caption_labels``
``queue_logits``,                  `modaloom.objectives.cots` (``cots_contrastive``)
``instance_queue_loss``,
``task_alignment_kl``,
``amf_keep_mask``
``itm_hard_negatives``             `modaloom.objectives.matching` (``itm``)
``label_smoothed_lm_loss``         `modaloom.objectives.lm` (``lm``)
``fine_grained_similarity``,       `modaloom.objectives.fine_grained_similarity` (``mga``)
``masked_softmax``
``mask_tokens_for_mlm``,           `modaloom.objectives.masking` (``mgc``, ``mvlm``)
``block_mask_patches``
``soft_cross_entropy``,            `modaloom.objectives.losses` (shared by several)
``zero_loss_like``, ``masked_mean``
=================================  ====================================================

Conventions shared by all functions:

* features passed to contrastive functions are L2-normalised rows, (B, D);
* ``temperature`` is a float or a 0-dim tensor (a learnable temperature gets its gradient);
* a **negative label or id means "none"**: such an entry is never a positive of any other entry
  (it stays a positive of its own pair). This is the batch convention (``labels`` is -1 for
  caption pairs) and the queue's initial value, and replaces OmniVL's ``0`` (a valid class id
  in most label sets) as the "caption pair, no class" marker of SPEC B3(d);
* per-sample losses are returned where AMF (B10) must mask them; :func:`masked_mean` averages
  over the kept samples and is a zero that keeps the graph when none is kept.
"""

from __future__ import annotations

from modaloom.objectives.contrastive import contrastive_loss
from modaloom.objectives.cots import (
    amf_keep_mask,
    instance_queue_loss,
    queue_logits,
    task_alignment_kl,
)
from modaloom.objectives.fine_grained_similarity import fine_grained_similarity, masked_softmax
from modaloom.objectives.lm import label_smoothed_lm_loss
from modaloom.objectives.losses import masked_mean, soft_cross_entropy, zero_loss_like
from modaloom.objectives.masking import block_mask_patches, mask_tokens_for_mlm
from modaloom.objectives.matching import itm_hard_negatives
from modaloom.objectives.queue_contrastive import (
    contrastive_loss_with_queue,
    positive_targets,
    remap_caption_labels,
)

__all__ = [
    "amf_keep_mask",
    "block_mask_patches",
    "contrastive_loss",
    "contrastive_loss_with_queue",
    "fine_grained_similarity",
    "instance_queue_loss",
    "itm_hard_negatives",
    "label_smoothed_lm_loss",
    "mask_tokens_for_mlm",
    "masked_mean",
    "masked_softmax",
    "positive_targets",
    "queue_logits",
    "remap_caption_labels",
    "soft_cross_entropy",
    "task_alignment_kl",
    "zero_loss_like",
]
