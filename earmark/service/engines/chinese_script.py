"""Chinese transcripts in one script: simplified unless the client asks for traditional.

Whisper writes Chinese in whichever script its training data used for similar audio, so the
same Mandarin speaker may come back in traditional characters one day and simplified the next
(issue 26 measured both on seven real recordings). A cache that stores what it was given would
then serve a mainland call centre traditional characters for seven days. Transcripts in Chinese
are converted with OpenCC (its `t2s` / `s2t` tables, character and phrase level): simplified for
`language=zh` (and for Chinese detected on its own), traditional when the client sends
`zh-Hant` (or `zh-TW`, `zh-HK`). The script is part of the request's language, so the two are
cached apart.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from earmark.service.engines.base import Segment

TRADITIONAL = "zh-hant"  # the profile language that asks for traditional characters
# The language codes engines report for Chinese speech, whose text gets one script.
CHINESE = frozenset({"zh", TRADITIONAL})


@lru_cache(maxsize=2)
def _converter(table: str):
    """An OpenCC converter (loading its dictionaries takes a few milliseconds: done once)."""
    import opencc

    return opencc.OpenCC(f"{table}.json")


def opencc_version() -> str:
    """The installed OpenCC's version: its tables shape the text, so it is part of a revision."""
    import opencc

    return str(getattr(opencc, "__version__", "unknown"))


def in_script_text(text: str, language: str) -> str:
    """`text` written in the script `language` asks for: traditional for TRADITIONAL,
    simplified for any other Chinese; unchanged for other languages."""
    if language not in CHINESE:
        return text
    return _converter("s2t" if language == TRADITIONAL else "t2s").convert(text)


def in_script(segments: tuple[Segment, ...], language: str) -> tuple[Segment, ...]:
    """The segments with their text and words written in the script `language` asks for
    (`in_script_text`)."""
    if language not in CHINESE:
        return segments
    return tuple(replace(segment, text=in_script_text(segment.text, language),
                         words=tuple(replace(word, word=in_script_text(word.word, language)) for word in segment.words))
                 for segment in segments)
