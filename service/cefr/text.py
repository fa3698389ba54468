"""Cutting a text into the pieces the CEFR model grades: sentences (it was trained on single
sentences), and sentences too long for it cut into word runs that fit."""
from __future__ import annotations

import re

# A sentence ends at . ! ? (and closing quotes/brackets) followed by space and an upper-case
# letter, digit or opening quote; blank lines and line breaks end one too.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*[-*•\d])")
MAX_WORDS = 80  # ~110 word pieces: within the model's 128 tokens, so nothing is truncated away


def pieces(text: str, max_words: int = MAX_WORDS) -> list[str]:
    """The text's sentences in order, each at most ``max_words`` words, blanks dropped."""
    out = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        for start in range(0, len(words), max_words):
            out.append(" ".join(words[start:start + max_words]))
    return [p for p in out if p]
