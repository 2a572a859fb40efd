"""Recognise an upload's container from its first bytes.

Clients send `application/octet-stream` and arbitrary file names, so the only trustworthy
evidence of what an upload is lies in its magic numbers. A format we do not recognise here is
answered as "not audio" (415) before any decoder sees it.
"""

from __future__ import annotations

# (offset, magic, label); checked in order, first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"RIFF", "wav"),  # refined below: RIFF....WAVE
    (0, b"RF64", "wav"),
    (0, b"fLaC", "flac"),
    (0, b"OggS", "ogg"),
    (0, b"ID3", "mp3"),
    (4, b"ftyp", "mp4"),
    (0, b"FORM", "aiff"),
    (0, b"\x1a\x45\xdf\xa3", "matroska"),
    (0, b"caff", "caf"),
    (0, b"#!AMR", "amr"),
    (0, b".snd", "au"),
    (0, b"MAC ", "ape"),
    (0, b"wvpk", "wavpack"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"),
)


def sniff_format(data: bytes) -> str | None:
    """Return a short container label for `data`, or None when it does not look like audio.

    Raw MPEG audio and ADTS AAC have no magic string, only a frame-sync pattern; those are
    accepted when the first bytes hold a plausible frame header.
    """
    head = data[:64]
    for offset, magic, label in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if magic in (b"RIFF", b"RF64") and head[8:12] != b"WAVE":
                return None
            if magic == b"FORM" and head[8:12] not in (b"AIFF", b"AIFC"):
                return None
            return label
    if len(head) >= 4 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        if (head[1] & 0x06) == 0:  # layer bits 00: ADTS (AAC)
            return "aac" if (head[1] & 0xF6) == 0xF0 else None
        bitrate_index = head[2] >> 4
        rate_index = (head[2] >> 2) & 0x03
        if bitrate_index not in (0, 15) and rate_index != 3 and (head[1] & 0x18) != 0x08:
            return "mp3"
    return None
