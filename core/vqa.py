"""VQA accuracy as the official VQA evaluation computes it, and normalised exact match.

Answer normalisation follows the official ``vqaEval.py`` (VQA v2, the 2016 revision that
BLIP-family code evaluates with): the prediction is stripped, then `process_punctuation`
and `process_digit_article` (lower case, number words to digits, articles dropped,
contractions restored) are applied; the human answers get `process_punctuation` only, and only
when they are not all identical (the released answers are already normalised).

Accuracy of one question: for each of the n human answers, leave it out and count the other
answers equal to the prediction, ``min(count / 3, 1)``; the accuracy is the mean over the n
subsets (n = 10 in VQA v2, so a prediction that 3 or more of the 9 others gave scores 1).
Note the consequence for a question with a single reference answer: nothing is left to match
and the accuracy is 0; use exact match (`exact_match`) for such data (video QA).

The 2021 revision of the official script normalises prediction and answers only when the
answers disagree; the two agree whenever the prediction is already normalised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTRACTIONS_TABLE = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn't've  couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't
hadnt hadn't  hadnt've hadn't've  hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd
hed've he'd've  he'dve he'd've  hes he's  howd how'd  howll how'll  hows how's  Id've I'd've
I'dve I'd've  Im I'm  Ive I've  isnt isn't  itd it'd  itd've it'd've  it'dve it'd've
itll it'll  let's let's  maam ma'am  mightnt mightn't  mightnt've mightn't've
mightn'tve mightn't've  mightve might've  mustnt mustn't  mustve must've  neednt needn't
notve not've  oclock o'clock  oughtnt oughtn't  ow's'at 'ow's'at  'ows'at 'ow's'at
'ow'sat 'ow's'at  shant shan't  shed've she'd've  she'dve she'd've  she's she's
shouldve should've  shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've
somebody'd somebodyd  somebodyd've somebody'd've  somebody'dve somebody'd've
somebodyll somebody'll  somebodys somebody's  someoned someone'd  someoned've someone'd've
someone'dve someone'd've  someonell someone'll  someones someone's  somethingd something'd
somethingd've something'd've  something'dve something'd've  somethingll something'll
thats that's  thered there'd  thered've there'd've  there'dve there'd've  therere there're
theres there's  theyd they'd  theyd've they'd've  they'dve they'd've  theyll they'll
theyre they're  theyve they've  twas 'twas  wasnt wasn't  wed've we'd've  we'dve we'd've
weve we've  werent weren't  whatll what'll  whatre what're  whats what's  whatve what've
whens when's  whered where'd  wheres where's  whereve where've  whod who'd  whod've who'd've
who'dve who'd've  wholl who'll  whos who's  whove who've  whyll why'll  whyre why're
whys why's  wont won't  wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've
wouldn'tve wouldn't've  yall y'all  yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've
y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd  youd've you'd've  you'dve you'd've
youll you'll  youre you're  youve you've
"""

_WORDS = _CONTRACTIONS_TABLE.split()
CONTRACTIONS: dict[str, str] = dict(zip(_WORDS[::2], _WORDS[1::2], strict=True))
"""Contractions written without apostrophe -> with it (``dont`` -> ``don't``), as the official
script's table (keys with capitals never match: words are lower-cased first)."""

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    **{
        word: str(value)
        for value, word in enumerate(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
        )
    },
}
"""The official ``manualMap``: number words to digits (``none`` counts as 0)."""

ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")  # fmt: skip
"""Characters `process_punctuation` removes; ``'`` and ``:`` stay, periods are handled apart."""

_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``.

    Each punctuation character is deleted when it touches a space somewhere in the text (or
    the text has a comma between digits, ``1,000``), else replaced by a space; then every
    period not followed by a digit is deleted (``3.5`` keeps its point).
    """
    out = text
    glued = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        spaced = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if spaced or glued else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower case, split on whitespace, number words to
    digits, articles dropped, contractions restored, words joined by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """A prediction as the official evaluation normalises it (tabs and newlines to spaces,
    stripped, `process_punctuation`, `process_digit_article`)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the human answers.

    Args:
        prediction: the model's answer, raw.
        answers: the human answers (10 in VQA v2), as released (repeats included).

    Returns:
        The mean over the leave-one-annotator-out subsets of ``min(#matches / 3, 1)``, in
        0..1. Examples: ``"two"`` against ten ``"2"``: 1.0; ``"yes"`` against 2 ``"yes"`` of 10:
        (2 * 1/3 + 8 * 2/3) / 10 = 0.6.

    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    predicted = normalize_answer(prediction)
    references = list(answers)
    if len(set(references)) > 1:
        references = [process_punctuation(a) for a in references]
    matches = [reference == predicted for reference in references]
    total = sum(matches)
    subsets = [min((total - int(left_out)) / 3, 1.0) for left_out in matches]
    return sum(subsets) / len(subsets)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction equals any reference answer after `normalize_answer` (applied
    to both), else 0.0: the video QA protocol (MSRVTT-QA, MSVD-QA)."""
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == predicted for answer in answers))
