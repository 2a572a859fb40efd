"""Chinese transcripts in one script (service/engines/chinese_script.py, issue 26): Whisper writes
either, the cache serves simplified unless the client asked for traditional."""

from __future__ import annotations

from earmark.service.engines.base import Segment, Word
from earmark.service.engines.chinese_script import TRADITIONAL, in_script

WRITTEN_TRADITIONAL = (Segment(0.0, 2.0, "我們在會議室裡討論這個問題。",
                               words=(Word("我們", 0.0, 0.4, 0.9), Word("會議室", 0.4, 1.0, 0.8))),)


def test_traditional_characters_are_served_simplified_for_chinese():
    simplified = in_script(WRITTEN_TRADITIONAL, "zh")
    assert simplified[0].text == "我们在会议室里讨论这个问题。"
    assert [word.word for word in simplified[0].words] == ["我们", "会议室"]
    assert [(word.start, word.end, word.probability) for word in simplified[0].words] == [(0.0, 0.4, 0.9), (0.4, 1.0, 0.8)]


def test_traditional_when_asked_and_other_languages_untouched():
    # OpenCC's standard traditional characters (裏 where Taiwan writes 裡)
    assert in_script(in_script(WRITTEN_TRADITIONAL, "zh"), TRADITIONAL)[0].text == "我們在會議室裏討論這個問題。"
    english = (Segment(0.0, 1.0, "Thank you.", words=(Word("Thank", 0.0, 0.5),)),)
    assert in_script(english, "en") == english and in_script(WRITTEN_TRADITIONAL, "ja") == WRITTEN_TRADITIONAL
