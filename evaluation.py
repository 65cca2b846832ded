"""The papers' evaluation protocols as plain functions (``from modaloom.evaluation import ...``).

Retrieval (`modaloom.core.metrics`)::

    retrieval_metrics(scores, positives)          # (Q, T) scores, (Q, T) bool positives
    # -> {"r1", "r5", "r10", "medr", "meanr"}: R@K in 0..1, ranks from 1, ties pessimistic

Several captions per item (COCO/Flickr: 5): text-to-visual queries are captions whose only
positive is their item; visual-to-text queries are items whose positives are their captions.
`Matches` builds the positives of such a layout a chunk at a time, `chunked_ranks` ranks
without holding more than a chunk of scores, `dual_softmax` re-scores (DSL).

VQA (`modaloom.core.vqa`)::

    vqa_accuracy("two", ["2"] * 10)               # 1.0: the official VQA accuracy
    exact_match("A dog.", ["dog"])                # 1.0: video QA (MSRVTT-QA, MSVD-QA)

Captioning (`modaloom.core.caption_metrics`)::

    caption_metrics({0: ["a dog runs", ...]}, {0: "a dog is running"})
    # -> BLEU-1..4, ROUGE-L, CIDEr-D, and METEOR / SPICE when Java can run them
"""

from modaloom.core.caption_metrics import caption_metrics, tokenize_caption
from modaloom.core.metrics import (
    RECALL_AT,
    Matches,
    best_positive_ranks,
    chunked_ranks,
    column_logsumexp,
    dual_softmax,
    dual_softmax_rows,
    recall_metrics,
    retrieval_metrics,
)
from modaloom.core.vqa import (
    exact_match,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
)

__all__ = [
    "RECALL_AT",
    "Matches",
    "best_positive_ranks",
    "caption_metrics",
    "chunked_ranks",
    "column_logsumexp",
    "dual_softmax",
    "dual_softmax_rows",
    "exact_match",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "recall_metrics",
    "retrieval_metrics",
    "tokenize_caption",
    "vqa_accuracy",
]
