"""The stored form of a recognition event (service/pipeline/event_record.py): every value back
bit for bit, reasons deflated against the frozen dictionary, and a record of another format or
a damaged one refused with ValueError (the log then leaves it out)."""

from __future__ import annotations

import pytest

from earmark.service.pipeline import event_record

VALUES = dict(time=1796666536.004212, endpoint="recognize", tier="miss", entry_id="fd" * 16, score=None,
              best_score=0.7231, rejection="window_below_threshold: worst stretch 0.723 < 0.74 (mean 0.788) at "
                                          "query 1.94 s / entry 1.92 s",
              query_digest="2e" * 20, duration_s=3.837125, engine_s_spent=0.5961870469982387, engine_s_saved=0.0,
              namespace="team-a", profile_id="bf" * 12)


def test_a_record_gives_back_every_value_exactly():
    assert event_record.unpack(event_record.pack(VALUES)) == VALUES
    hit = VALUES | dict(tier="fuzzy", score=0.0, best_score=0.0, rejection=None, engine_s_spent=0.0,
                        engine_s_saved=1.25, entry_id=None)
    assert event_record.unpack(event_record.pack(hit)) == hit


def test_a_known_reason_is_deflated_and_an_unknown_one_kept_as_text():
    record = event_record.pack(VALUES)
    assert len(record) < 80 + len(VALUES["rejection"]) // 2
    odd = VALUES | dict(rejection="§ nothing the dictionary knows §", endpoint="elsewhere", tier="new")
    assert event_record.unpack(event_record.pack(odd)) == odd


@pytest.mark.parametrize("damage", [
    lambda record: bytes([event_record.FORMAT + 1]) + record[1:],  # a newer earmark's format
    lambda record: record[:len(record) // 2],  # cut short
    lambda record: b"",
])
def test_a_record_of_another_format_or_damaged_is_refused(damage):
    with pytest.raises(ValueError):
        event_record.unpack(damage(event_record.pack(VALUES)))
