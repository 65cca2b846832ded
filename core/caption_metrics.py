"""COCO caption metrics through pycocoevalcap (``pip install modaloom[eval]``): BLEU-1..4,
METEOR, ROUGE-L, CIDEr-D and SPICE, with several references per item.

* CIDEr is the COCO toolkit's CIDEr-D (0..10 scale); its IDF is computed over the evaluated
  references, so it needs varied captions.
* METEOR and SPICE run Java scorers: they are computed when a ``java`` binary is on PATH (and,
  for SPICE, when Stanford CoreNLP's jars are already installed beside pycocoevalcap's SPICE:
  they are never downloaded here); otherwise a one-line notice is logged once and the other
  metrics are still reported.
* The COCO toolkit's ``PTBTokenizer`` needs Java too, so captions are tokenized here instead
  (`tokenize_caption`: lowercase, punctuation removed, whitespace split), which matches it on
  plain English captions.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
"""What pycocoevalcap's SPICE downloads on first use; SPICE is left out when they are absent."""


def tokenize_caption(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, whitespace collapsed (PTBTokenizer-like)."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


@functools.cache
def notice(message: str) -> None:
    """Log ``message`` as a warning, once per process."""
    log.warning(message)


def spice_missing() -> str | None:
    """Why SPICE cannot run here (no Java, no CoreNLP jars), or ``None`` when it can."""
    if shutil.which("java") is None:
        return "no java on PATH"
    found = importlib.util.find_spec("pycocoevalcap.spice.spice")
    if found is None or found.origin is None:
        return "pycocoevalcap has no SPICE"
    lib = Path(found.origin).parent / "lib"
    if not all((lib / jar).exists() for jar in CORENLP_JARS):
        return f"Stanford CoreNLP jars not installed in {lib} (SPICE downloads them on first use)"
    return None


def java_score(
    name: str, references: dict[int, list[str]], candidates: dict[int, list[str]]
) -> float | None:
    """Corpus METEOR or SPICE through pycocoevalcap's Java scorers; ``None`` (with a notice,
    once) when the scorer cannot run.

    Args:
        name: ``"meteor"`` or ``"spice"``.
        references: per id, tokenized reference captions.
        candidates: per id, a one-element list with the tokenized candidate.
    """
    missing = spice_missing() if name == "spice" else None
    if shutil.which("java") is None:
        missing = "no java on PATH"
    if missing is not None:
        notice(f"captioning: {name.upper()} left out ({missing})")
        return None
    try:
        if name == "spice":
            from pycocoevalcap.spice.spice import Spice

            score, _ = Spice().compute_score(references, candidates)
        else:
            from pycocoevalcap.meteor.meteor import Meteor

            score, _ = Meteor().compute_score(references, candidates)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        notice(f"captioning: {name.upper()} left out (the Java scorer failed: {exc})")
        return None
    return float(score)


def caption_metrics(
    references: dict[int, list[str]],
    candidates: dict[int, str],
    meteor: bool = True,
    spice: bool = True,
) -> dict[str, float]:
    """COCO caption metrics of candidates against their references.

    Args:
        references: per item id, one or more reference captions (COCO: 5).
        candidates: per item id (the same ids), the generated caption.
        meteor: also compute METEOR (when Java is available).
        spice: also compute SPICE (when Java and the CoreNLP jars are available).

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"}`` plus ``"meteor"`` and
        ``"spice"`` when computed; floats, BLEU/ROUGE-L/METEOR/SPICE in 0..1, CIDEr-D in
        0..10.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs = {i: [tokenize_caption(r) for r in captions] for i, captions in references.items()}
    cands = {i: [tokenize_caption(candidates[i])] for i in references}
    bleu, _ = Bleu(4).compute_score(refs, cands, verbose=0)
    metrics = {f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)}
    metrics["rouge_l"] = float(Rouge().compute_score(refs, cands)[0])
    metrics["cider"] = float(Cider().compute_score(refs, cands)[0])
    for name, wanted in (("meteor", meteor), ("spice", spice)):
        score = java_score(name, refs, cands) if wanted else None
        if score is not None:
            metrics[name] = score
    return metrics
