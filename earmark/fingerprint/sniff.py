"""Recognise an upload's container from its first bytes.

Clients send `application/octet-stream` and arbitrary file names, so the only trustworthy
evidence of what an upload is lies in its magic numbers. A format we do not recognise here is
answered as "not audio" (415) before any decoder sees it.

What is recognised: the containers the bundled FFmpeg decodes that people record or keep
speech in and that announce themselves, from WAV and MP4 to Flash video, Sound Blaster-era
Creative VOC, NIST SPHERE (speech corpora), MPEG transport streams (broadcast, HLS) and raw
AC-3, each tested with a file its real muxer wrote (tests/audio_tools.py). Formats FFmpeg
reads but nothing here can write to test them (Olympus DSS, Qualcomm QCP, Shorten, TAK,
Musepack, raw DTS) are not accepted yet. Headerless streams (raw PCM, G.729, GSM) cannot be
told from noise and stay refused.
"""

from __future__ import annotations

# How much of an upload the sniffer looks at: enough for a second AC-3 / E-AC-3 frame's sync
# word (frames are at most 4096 bytes) and for four MPEG-TS packets (4 x 192 bytes).
SNIFF_BYTES = 4100

# Sony Wave64's chunk identifiers are GUIDs whose first four bytes spell the RIFF names.
_W64_RIFF = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"
_W64_WAVE = b"wave\xf3\xac\xd3\x11\x8c\xd1\x00\xc0\x4f\x8e\xdb\x8a"

# (offset, magic, label); checked in order, first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"RIFF", "wav"),  # refined below: RIFF....WAVE, or AVI
    (0, b"RF64", "wav"),
    (0, b"BW64", "wav"),  # broadcast WAV (ITU-R BS.2088): RF64 by another name
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
    (0, b"FLV\x01", "flv"),  # Flash video and old web recorders (Nellymoser, Speex, MP3, AAC)
    (0, b"TTA1", "tta"),
    (0, _W64_RIFF, "w64"),  # refined below: its WAVE GUID
    (0, b"Creative Voice File\x1a", "voc"),
    (0, b"NIST_1A\n", "nistsphere"),  # speech corpora (TIMIT, Switchboard)
    (0, b".RMF", "rm"),  # RealMedia
    (0, b".ra\xfd", "rm"),  # RealAudio without the RealMedia wrapper
    (0, b".SoX", "sox"),  # SoX's own format, either byte order
    (0, b"XoS.", "sox"),
    (0, b"\x00\x00\x01\xba", "mpeg"),  # MPEG program stream (.mpg, .vob): refined below
)

# AC-3 frame sizes in 16-bit words by frmsizecod // 2, at 48, 44.1 and 32 kHz (ATSC A/52
# table 5.18); at 44.1 kHz an odd frmsizecod adds one word.
_AC3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640)
_AC3_WORDS_44K = (69, 87, 104, 121, 139, 174, 208, 243, 278, 348, 417, 487, 557, 696, 835, 975, 1114, 1253, 1393)


def sniff_format(data: bytes) -> str | None:
    """Return a short container label for `data` (an upload's first `SNIFF_BYTES`, or all
    of a shorter one), or None when it does not look like audio.

    Raw MPEG audio and ADTS AAC have no magic string, only a frame-sync pattern; those are
    accepted when the first bytes hold a plausible frame header. Raw AC-3 and MPEG-TS are
    accepted only when a second frame or packet starts where the first one says it ends.
    """
    head = data[:SNIFF_BYTES]
    for offset, magic, label in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return _refined(head, magic, label)
    if len(head) >= 4 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        if (head[1] & 0x06) == 0:  # layer bits 00: ADTS (AAC)
            return "aac" if (head[1] & 0xF6) == 0xF0 else None
        bitrate_index = head[2] >> 4
        rate_index = (head[2] >> 2) & 0x03
        if bitrate_index not in (0, 15) and rate_index != 3 and (head[1] & 0x18) != 0x08:
            return "mp3"
    if head[:2] == b"\x0b\x77":
        return _ac3_frames(head)
    if _transport_stream(head):
        return "mpegts"
    return None


def _refined(head: bytes, magic: bytes, label: str) -> str | None:
    """Check what a magic number alone leaves open (RIFF holds more than audio)."""
    if magic in (b"RIFF", b"RF64", b"BW64"):
        form = head[8:12]
        if form == b"WAVE":
            return label
        return "avi" if magic == b"RIFF" and form == b"AVI " else None
    if magic == b"FORM" and head[8:12] not in (b"AIFF", b"AIFC"):
        return None
    if magic == _W64_RIFF and head[24:40] != _W64_WAVE:
        return None
    if magic == b"\x00\x00\x01\xba":
        # The pack header's marker bits: '01' for MPEG-2, '0010' for MPEG-1.
        return label if (head[4] & 0xC4) == 0x44 or (head[4] & 0xF1) == 0x21 else None
    return label


def _ac3_frames(head: bytes) -> str | None:
    """"ac3" or "eac3" when `head` starts with an AC-3 or E-AC-3 frame whose header fields
    are all valid and which a second frame follows exactly where the first ends (or the data
    ends there); None otherwise.

    The sync word 0x0B77 alone turns up once in 65,536 random byte pairs; a valid header with
    a second sync word at the size it gives does not happen by chance."""
    if len(head) < 6:
        return None
    bsid = head[5] >> 3
    fscod = head[4] >> 6
    if bsid <= 10:  # AC-3 (bsid 9 and 10: its half- and quarter-rate variants)
        frmsizecod = head[4] & 0x3F
        if fscod == 3 or frmsizecod >= 38:
            return None
        rate = frmsizecod >> 1
        if fscod == 0:  # 48 kHz
            words = 2 * _AC3_BITRATES[rate]
        elif fscod == 1:  # 44.1 kHz
            words = _AC3_WORDS_44K[rate] + (frmsizecod & 1)
        else:  # 32 kHz
            words = 3 * _AC3_BITRATES[rate]
    elif bsid <= 16:  # E-AC-3
        if head[2] >> 6 == 3:  # stream type 3 is reserved
            return None
        if fscod == 3 and (head[4] >> 4) & 0x03 == 3:  # reduced rate: fscod2 3 is reserved
            return None
        words = (((head[2] & 0x07) << 8) | head[3]) + 1
    else:
        return None
    size = 2 * words
    if len(head) >= size + 2:
        followed = head[size:size + 2] == b"\x0b\x77"
    else:
        followed = len(head) == size and len(head) < SNIFF_BYTES  # a one-frame file, seen whole
    return ("ac3" if bsid <= 10 else "eac3") if followed else None


def _transport_stream(head: bytes) -> bool:
    """Whether `head` is an MPEG transport stream: the sync byte 0x47 every 188 bytes (or
    every 192, after the 4-byte timestamp of a Blu-ray .m2ts), four packets running."""
    for start, stride in ((0, 188), (4, 192)):
        if len(head) >= start + 3 * stride + 1 and all(head[start + n * stride] == 0x47 for n in range(4)):
            return True
    return False
