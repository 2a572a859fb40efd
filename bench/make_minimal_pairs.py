#!/usr/bin/env python3
"""Build a minimal-pair corpus: recordings that must never match, though they differ slightly.

Every pair is two utterances by the *same* synthetic voice (espeak-ng voice,
speed and pitch), differing in one small thing: a teen/ty number, one digit,
an amount, a time, can/can't, a name, one inserted or dropped word, a fraction
of a second of speech cut off the end or the start, or (Mandarin) one digit,
one tone or one syllable.  A is what the cache has seen; B is a new query that
a fuzzy matcher must *not* map to A.  True copies of A (re-encoded, resampled,
quieter, noisier, padded, through telephone codecs) are built too, as a control: those must still match.

Written under ``--out``:

* ``a/<pair_id>.wav`` - utterance A, espeak-ng's own WAV (22.05 kHz mono 16-bit).
* ``b/<pair_id>.wav`` - utterance B, same format.  For ``cut_end``/``cut_start``
  B is A's samples, bit-identical, with 0.1-0.4 s of speech removed at the
  end/start and the original amount of (digital) silence put back.
* ``copies/<transform>/<pair_id>.<ext>`` - A under a subset of
  ``make_corpus.TRANSFORMS`` (built by make_corpus's own job runner).
* ``manifest.json`` - ``pairs`` and ``copies``, paths relative to ``--out``.

Deterministic (all choices seeded from ``--seed``; espeak-ng, sox ``-R -D`` and
ffmpeg ``+bitexact`` as in make_corpus) and idempotent (``.specs.json`` holds a
recipe hash per file; unchanged recipes are skipped).  Pair k of a kind
depends only on the seed and that kind's earlier pairs, so changing
``--pairs`` keeps every pair that is still planned (and builds only new ones).

Usage::

    .venv/bin/python bench/make_minimal_pairs.py [--out bench/data/minimal_pairs] \
        [--pairs 400] [--jobs 2] [--seed 20241124]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_corpus as mc  # noqa: E402  (bench/ is not a package)
from make_corpus import Item, Voice  # noqa: E402

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "minimal_pairs"
DEFAULT_PAIRS = 400

SPEED_RANGE = (130, 190)  # espeak-ng -s, words per minute
PITCH_RANGE = (30, 70)  # espeak-ng -p

EN_BASE_VOICES = mc.EN_BASE_VOICES
VOICE_VARIANTS = mc.VOICE_VARIANTS
# Not make_corpus's plain "cmn": in espeak-ng 1.51 "cmn" is "Mandarin, latin
# as English", and most characters come out as their pinyin read *in English*
# with the tone digit spoken as an English number (您 -> "nin two", 卖 ->
# "mai four").  "cmn-latn-pinyin" uses the same dictionary but reads that
# pinyin as Mandarin, with tones (卖 -> m'ai51).  Without it a tone pair would
# differ by the English words "three"/"four", not by a tone.
CMN_BASE_VOICES = ("cmn-latn-pinyin",)

# Relative weights of the kinds; counts are allotted by largest remainder.
KIND_WEIGHTS = {
    "teen_ty": 3.0, "digit_string": 3.0, "amount": 3.0, "time": 3.0,
    "can_cant": 1.0, "will_wont": 1.0, "is_isnt": 1.0,
    "name_changed": 3.0, "word_inserted": 2.5, "word_dropped": 2.5,
    "cut_end": 2.5, "cut_start": 2.5,
    "cmn_digit": 2.0, "cmn_tone": 1.5, "cmn_word": 1.5,
}
CUT_KINDS = {"cut_end": "end", "cut_start": "start"}
CUT_RANGE = (0.1, 0.4)  # seconds of speech removed
CUT_CMN_EVERY = 5  # every 5th cut pair is Mandarin
CUT_MIN_EST = 2.2  # cut sources are at least this long (estimated speech, s)
CUT_MIN_LEFT_S = 0.8  # a cut must leave at least this much speech

SPEECH_FRAME_S = 0.02  # 20 ms frames for locating speech
SPEECH_DBFS = -45.0  # a frame is speech if its RMS is above this (re 32768)

# Lengths are aimed at with a linear model of espeak-ng 1.51's *speech* time
# (first to last sample above SPEECH_DBFS), fitted on a default build: per
# letter, word, sentence break and comma (English) or per character and
# inner punctuation mark (Mandarin), in seconds at 160 wpm.  Measured/estimated
# is 0.75-1.25 (English) and 0.87-1.17 (Mandarin), so the estimated range is
# narrower than the ~1.5-8 s of speech aimed at.
EST_RANGE = (1.6, 7.2)
EN_SPEECH_MODEL = (0.0594, 0.0538, 0.2547, 0.2957)  # letters, words, breaks, commas
CMN_SPEECH_MODEL = (0.2745, 0.3966)  # characters, inner punctuation
MODEL_REF_SPEED = 160

COPY_TRANSFORMS = ("mp3_32k", "opus_24k", "aac_64k", "wav_8k", "gain_minus6", "noise_30db",
                   "pad_start_0_5",
                   # telephone codecs
                   "gsm_8k", "g726_16k", "g723_1", "opus_8k", "mp3_16k_11k", "ulaw_8k",
                   # 6 dB louder through sox's limiter: it engages on every A (espeak-ng peaks
                   # above -6 dBFS) and fills the spectrum's valleys in the loudest syllables
                   "gain_plus6")
# B made louder through the same limiter, judged against the untouched A: a prompt normalised
# with a limiter before it reaches the cache, while the cached one was not.
LIMITED_B = "gain_plus6"
CUT_ALGO = "speech_bounds_v1"  # part of the cut recipe: bump when the cut logic changes
SUBDIRS = ("a", "b", "copies", "b_limited")

# --------------------------------------------------------------------------
# Texts (written for this corpus)
# --------------------------------------------------------------------------

EN_PRE = (
    "Hello.", "Thank you for calling.", "This is an automated message.", "Good afternoon.",
    "Please listen carefully.", "This is a reminder from your bank.", "Welcome back.",
    "Here is an important update.",
)
EN_POST = (
    "Thank you.", "Goodbye.", "Press one to hear this message again.",
    "Please have your card ready.", "We look forward to hearing from you.",
    "To speak to an adviser, stay on the line.", "No further action is needed.",
    "Have a nice day.",
)
CMN_PRE = ("您好，", "尊敬的客户，", "温馨提示，", "各位乘客请注意，", "早上好，")
CMN_POST = ("谢谢。", "祝您生活愉快。", "如有疑问请致电客服。", "感谢您的耐心等待。", "请您留意。")

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
TEEN_TY = tuple((ONES[d + 10], TENS[d]) for d in range(3, 10))  # (thirteen, thirty) ...

TEEN_TY_TEMPLATES = (
    "Your balance is {n} pounds and {x} pence.",
    "The train departs from platform {n}.",
    "You have {n} new messages.",
    "Please hold, you are caller number {n}.",
    "Your order will arrive in {n} days.",
    "There are {n} people ahead of you in the queue.",
    "Your estimated waiting time is {n} minutes.",
    "The discount for members is {n} percent.",
    "Flight {n} to {city} is now boarding.",
    "Your parcel weighs {n} kilograms.",
    "The next bus leaves in {n} minutes.",
    "Please go to counter {n} when your number is called.",
)
DIGIT_TEMPLATES = (
    "Your reference number is {d}.",
    "Please call us back on {d}.",
    "Your account number ends in {d}.",
    "Your verification code is {d}. Do not share it with anyone.",
    "Your booking reference is {d}.",
    "To confirm, the card you are using ends in {d}.",
    "Your parcel tracking number is {d}.",
    "For security, please enter the code {d} when asked.",
)
AMOUNT_TEMPLATES = (
    "Your balance is {a} dollars.",
    "The total comes to {a} pounds and {x} pence.",
    "A payment of {a} euros was received today.",
    "Your monthly bill is {a} dollars and {x} cents.",
    "You have earned {a} reward points this month.",
    "The fine for late return is {a} pounds.",
    "We have refunded {a} dollars to your card.",
    "The deposit required is {a} pounds.",
)
TIME_TEMPLATES = (
    "Your appointment is on {day} at {time}.",
    "The meeting has been moved to {day} at {time}.",
    "We will call you back on {day} at {time}.",
    "The next train to {city} leaves at {time}.",
    "The pharmacy closes at {time} today.",
    "Your table is booked for {time} on {day}.",
    "The engineer will visit on {day} morning.",
    "Your delivery will arrive on {day} after {time}.",
)
DAY_PAIRS = (("Tuesday", "Thursday"), ("Monday", "Sunday"), ("Saturday", "Sunday"),
             ("Monday", "Friday"), ("Tuesday", "Wednesday"), ("Thursday", "Friday"))
CITIES = ("Leeds", "York", "Bristol", "Glasgow", "Boston", "Denver", "Cardiff", "Dublin")
MINUTES = ("twenty", "thirty", "forty", "forty five", "fifty", "oh five", "ten")
# Templates for can/can't, will/won't, is/isn't: {v} is the verb.
MODAL_TEMPLATES = {
    "can_cant": (("can", "can't"), (
        "You {v} collect your parcel from tomorrow.",
        "We {v} deliver to your address on Saturday.",
        "You {v} pay by card at the door.",
        "Customers {v} park here after six in the evening.",
        "I {v} confirm that your order has been shipped.",
        "You {v} change your booking online.",
        "The adviser {v} call you back this afternoon.",
    )),
    "will_wont": (("will", "won't"), (
        "Your card {v} be charged today.",
        "The office {v} be open on Monday.",
        "Your refund {v} arrive within five working days.",
        "The engineer {v} call before arriving.",
        "We {v} send you a replacement card.",
        "This offer {v} be available next month.",
        "The lift {v} be working again by tonight.",
    )),
    "is_isnt": (("is", "isn't"), (
        "Your payment {v} complete.",
        "The lift {v} working again.",
        "Your account {v} active.",
        "This line {v} open at weekends.",
        "The item you ordered {v} in stock.",
        "The main road {v} closed because of flooding.",
        "Your prescription {v} ready to collect.",
    )),
}
NAME_TEMPLATES_FIRST = (
    "Please ask for {f} at reception.",
    "This is a message for {f}.",
    "{f} will call you back this afternoon.",
    "The parcel was signed for by {f}.",
    "Hello {f}, your table is ready.",
    "Your case has been passed to {f} in our support team.",
)
NAME_TEMPLATES_SURNAME = (
    "Dear Mr {s}, your order is ready for collection.",
    "Your appointment is with Doctor {s} on the second floor.",
    "Could Mrs {s} please come to the front desk.",
    "The booking is under the name {s}.",
    "Professor {s} will give the talk today.",
    "Please make the cheque payable to {s} and Partners.",
)
# First and second are different people.  Near-homophones are marked; every
# pair was checked to get different phonemes from all eight English voices.
FIRST_NAME_PAIRS = (
    ("John", "Jane"), ("Dan", "Don"), ("Mark", "Mike"), ("Tim", "Tom"), ("Ben", "Ken"),
    ("Allen", "Ellen"), ("Jenny", "Penny"), ("Sean", "Shane"), ("Harry", "Larry"),
    ("Molly", "Polly"), ("Jack", "Jake"), ("Sam", "Pam"), ("Nina", "Tina"), ("Eric", "Erica"),
    ("Martin", "Marvin"), ("Emma", "Anna"),
)
SURNAME_PAIRS = (
    ("Smith", "Smyth"),  # near-homophone
    ("Lane", "Laing"),  # near-homophone
    ("Hill", "Hall"), ("Wood", "Ward"), ("Bennett", "Barnett"), ("Morgan", "Logan"),
    ("Jones", "Jonas"), ("Carter", "Porter"), ("Hughes", "Hayes"), ("Patel", "Pascal"),
    ("Mathers", "Mathews"), ("Brown", "Braun"),
)
# Sentences with one optional short word in brackets.
OPTIONAL_WORD_TEMPLATES = (
    "Please call us back [today].",
    "The account is [now] closed.",
    "Your parcel has [already] been delivered.",
    "[Please] hold the line.",
    "Your order is [still] being processed.",
    "We have [just] sent you a text message.",
    "The office is closed [all] day on Monday.",
    "Your [new] card has been posted to you.",
    "We are [very] sorry for the delay.",
    "Please enter your [full] postcode.",
    "Your password was changed [again] yesterday.",
    "We [really] value your feedback.",
    "The train to {city} is running [slightly] late.",
    "Please keep your [booking] reference ready.",
    "Your flight is [now] boarding at gate six.",
    "Your statement is [also] available online.",
)

CMN_DIGITS = "零一二三四五六七八九"
CMN_SUB = {1: 7, 7: 1, 3: 8, 8: 3}  # 一/七, 三/八 (四/十 is handled as a number swap)
CMN_FOUR_TEN = ((4, 10), (14, 40))
CMN_DIGIT_TEMPLATES = (  # (template, slot kind)
    ("您的余额是{n}元。", "amount"),
    ("本次消费共计{n}元。", "amount"),
    ("您本月的话费是{n}元。", "amount"),
    ("您有{n}条未读消息。", "count"),
    ("您前面还有{n}位顾客在等待。", "count"),
    ("请到{n}号窗口办理业务。", "label"),
    ("您的座位在{n}号车厢。", "label"),
    ("会议改到下午{n}点。", "hour"),
    ("本店营业到晚上{n}点半。", "hour"),
    ("活动将在{n}月五号举行。", "month"),
    ("请拨打{p}联系我们。", "phone"),
    ("客服电话是{p}。", "phone"),
    ("您的验证码是{p}，请勿告诉他人。", "code"),
    ("您的取件码是{p}。", "code"),
)
CMN_TONE_PAIRS = (  # same syllable, different tone
    ("我想买房子。", "我想卖房子。"),  # mǎi / mài
    ("我们不买这个。", "我们不卖这个。"),
    ("我听见妈在叫。", "我听见马在叫。"),  # mā / mǎ
    ("请给我一碗汤。", "请给我一碗糖。"),  # tāng / táng
    ("你去问一下。", "你去闻一下。"),  # wèn / wén
    ("他在看书。", "他在看树。"),  # shū / shù
    ("这里不能买烟。", "这里不能买盐。"),  # yān / yán
    ("今天有鱼。", "今天有雨。"),  # yú / yǔ
    ("我要一个新杯子。", "我要一个新被子。"),  # bēi / bèi
    ("他今天有很多事。", "他今天有很多诗。"),  # shì / shī
)
CMN_WORD_PAIRS = (  # one syllable inserted or changed
    ("他是老师。", "他不是老师。"),
    ("你可以进来。", "你不可以进来。"),
    ("这里可以停车。", "这里不可以停车。"),
    ("我有时间。", "我没有时间。"),
    ("今天下午开会。", "明天下午开会。"),
    ("请向左转。", "请向右转。"),
    ("会议在上午举行。", "会议在下午举行。"),
    ("您的订单已发货。", "您的订单未发货。"),
    ("请走前门。", "请走后门。"),
    ("电梯在左边。", "电梯在右边。"),
    ("这是我的包。", "这不是我的包。"),
    ("他明天会来。", "他明天不会来。"),
    ("您输入的密码正确。", "您输入的密码不正确。"),
    ("男洗手间在二楼。", "女洗手间在二楼。"),
    ("我要买包子。", "我要买报纸。"),
    ("请给我一杯大杯咖啡。", "请给我一杯小杯咖啡。"),
)

# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def en_number(n: int) -> str:
    """0..999 in British English words ("one hundred and five")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + (f" {ONES[n % 10]}" if n % 10 else "")
    rest = n % 100
    return f"{ONES[n // 100]} hundred" + (f" and {en_number(rest)}" if rest else "")


def cmn_number(n: int) -> str:
    """0..9999 in Chinese characters (105 -> 一百零五, 14 -> 十四, 200 -> 两百)."""
    if n < 10:
        return CMN_DIGITS[n]
    if n < 20:
        return "十" + (CMN_DIGITS[n % 10] if n % 10 else "")
    out, started, zero = "", False, False
    for val, unit in ((1000, "千"), (100, "百"), (10, "十")):
        d = n // val % 10
        if d:
            out += ("零" if zero else "") + ("两" if d == 2 and val >= 100 else CMN_DIGITS[d]) + unit
            started, zero = True, False
        elif started:
            zero = True
    if n % 10:
        out += ("零" if zero else "") + CMN_DIGITS[n % 10]
    return out


def estimate(parts: list[str], lang: str, speed: int) -> float:
    """Estimated seconds of speech when the text parts are read in one go."""
    text = join(parts, lang)
    if lang == "cmn":
        chars = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
        inner = sum(1 for c in text.rstrip("。，") if c in "。，")
        per = CMN_SPEECH_MODEL[0] * chars + CMN_SPEECH_MODEL[1] * inner
    else:
        letters = sum(c.isalpha() for c in text)
        breaks = sum(text.rstrip(".?! ").count(c) for c in ".?!")
        feats = (letters, len(text.split()), breaks, text.count(","))
        per = sum(c * f for c, f in zip(EN_SPEECH_MODEL, feats, strict=True))
    return per * MODEL_REF_SPEED / speed


def join(parts: list[str], lang: str) -> str:
    """Join text parts with a space (English) or nothing (Mandarin)."""
    return ("" if lang == "cmn" else " ").join(p for p in parts if p)


def frame_text(rng: random.Random, core_a: str, core_b: str, lang: str, speed: int,
               min_s: float = EST_RANGE[0]) -> tuple[str, str]:
    """Wrap both texts in the same lead-in/sign-off so the pair's length spreads over EST_RANGE.

    A target length is drawn; a lead-in and/or a sign-off are added while the
    (longer) text is below it and stays under the upper bound.  Both sides get
    the same framing, so the pair still differs in one thing only.
    """
    pre, post = (CMN_PRE, CMN_POST) if lang == "cmn" else (EN_PRE, EN_POST)
    lo, hi = EST_RANGE
    # A quarter stay bare (framed only if too short), so short pairs are common too.
    target = max(min_s, lo if rng.random() < 0.25 else rng.uniform(lo, hi))
    longer = core_a if len(core_a) >= len(core_b) else core_b
    before, after = "", ""
    for slot in rng.sample(("pre", "post"), 2):
        if estimate([before, longer, after], lang, speed) >= target:
            break
        cand = rng.choice(pre if slot == "pre" else post)
        if estimate([before, longer, after, cand], lang, speed) <= hi:
            before, after = (cand, after) if slot == "pre" else (before, cand)
    return join([before, core_a, after], lang), join([before, core_b, after], lang)


def shared_slots(rng: random.Random) -> dict[str, str]:
    """Random fillers for the slots both sides of a pair share ({city}, {x})."""
    return {"city": rng.choice(CITIES), "x": en_number(rng.choice((5, 10, 20, 25, 50, 75, 99)))}


def swap(a: str, b: str, k: int) -> tuple[str, str]:
    """Alternate the direction of a pair with its index (both directions get used)."""
    return (a, b) if k % 2 == 0 else (b, a)


# --------------------------------------------------------------------------
# Pair generators: each returns (core text A, core text B) for pair k
# --------------------------------------------------------------------------


def gen_teen_ty(rng: random.Random, k: int) -> tuple[str, str]:
    """thirteen/thirty ... nineteen/ninety in one IVR sentence."""
    t = rng.choice(TEEN_TY_TEMPLATES)
    teen, ty = rng.choice(TEEN_TY)
    slots = shared_slots(rng)
    return swap(t.format(n=teen, **slots), t.format(n=ty, **slots), k)


def gen_digit_string(rng: random.Random, k: int) -> tuple[str, str]:
    """A digit string, read digit by digit, with one digit changed."""
    t = rng.choice(DIGIT_TEMPLATES)
    digits = [rng.randrange(10) for _ in range(rng.choice((4, 5, 6, 6, 8, 11)))]
    changed = list(digits)
    pos = rng.randrange(len(digits))
    changed[pos] = rng.choice([d for d in range(10) if d != digits[pos]])

    def words(ds: list[int]) -> str:
        w = [ONES[d] for d in ds]
        if len(w) >= 8:  # read long strings in groups, as people do
            step = 4 if len(w) == 8 else 3
            w = [x + ("," if (i + 1) % step == 0 and i + 1 < len(w) else "")
                 for i, x in enumerate(w)]
        return " ".join(w)

    return swap(t.format(d=words(digits)), t.format(d=words(changed)), k)


def gen_amount(rng: random.Random, k: int) -> tuple[str, str]:
    """An amount in words with its units, tens or hundreds word changed (no teens)."""
    t = rng.choice(AMOUNT_TEMPLATES)
    slots = shared_slots(rng)
    while True:
        a = rng.randrange(21, 1000)
        if 10 <= a % 100 < 20:
            continue  # teen endings belong to teen_ty
        change = rng.choice(("units", "units", "tens", "hundreds"))
        h, tn, u = a // 100, a // 10 % 10, a % 10
        if change == "units" and u:
            b = a - u + rng.choice([d for d in range(1, 10) if d != u])
        elif change == "tens" and tn >= 2:
            b = a + (rng.choice([d for d in range(2, 10) if d != tn]) - tn) * 10
        elif change == "hundreds" and h:
            b = a + (rng.choice([d for d in range(1, 10) if d != h]) - h) * 100
        else:
            continue
        break
    return swap(t.format(a=en_number(a), **slots), t.format(a=en_number(b), **slots), k)


def en_time(hour: int, minute: str, suffix: str) -> str:
    """A clock time in words: "ten thirty", "three p.m.", "half past four"."""
    if minute in ("half past", "quarter past", "quarter to"):
        return f"{minute} {ONES[hour]}"
    if minute == "o'clock":
        return f"{ONES[hour]} o'clock"
    return " ".join(p for p in (ONES[hour], minute, suffix) if p)


def gen_time(rng: random.Random, k: int) -> tuple[str, str]:
    """A day or a clock time changed: minutes, hour, a.m./p.m., quarter past/to."""
    t = rng.choice(TIME_TEMPLATES)
    city = rng.choice(CITIES)
    day_a, day_b = rng.choice(DAY_PAIRS)
    hour = rng.randint(1, 12)
    style = rng.choice(("minute", "minute", "ampm", "ampm", "hour", "past_to", "oclock"))
    minute = rng.choice(MINUTES) if style in ("minute", "hour") else ""
    suffix = rng.choice(("a.m.", "p.m.")) if style == "ampm" else ""
    if style == "past_to":
        minute = "quarter past"
    if style == "oclock":
        minute = "o'clock"
    time_a = en_time(hour, minute, suffix)
    changes = (["day"] if "{day}" in t else []) + (["time"] if "{time}" in t else [])
    what = rng.choice(changes)
    time_b = time_a
    if what == "time":
        if style == "minute":
            time_b = en_time(hour, rng.choice([m for m in MINUTES if m != minute]), "")
        elif style == "ampm":
            time_b = en_time(hour, "", "p.m." if suffix == "a.m." else "a.m.")
        elif style == "past_to":
            time_b = en_time(hour, "quarter to", "")
        else:
            time_b = en_time(rng.choice([h for h in range(1, 13) if h != hour]), minute, "")
        day_b = day_a
    a = t.format(day=day_a, time=time_a, city=city).replace("..", ".")
    b = t.format(day=day_b, time=time_b, city=city).replace("..", ".")
    return swap(a, b, k)


def gen_modal(kind: str):
    """Generator for can/can't, will/won't or is/isn't."""
    (pos, neg), templates = MODAL_TEMPLATES[kind]

    def gen(rng: random.Random, k: int) -> tuple[str, str]:
        t = rng.choice(templates)
        return swap(t.format(v=pos), t.format(v=neg), k)

    return gen


def gen_name(rng: random.Random, k: int) -> tuple[str, str]:
    """One first name or surname changed (some near-homophones)."""
    if rng.random() < 0.5:
        t, (x, y) = rng.choice(NAME_TEMPLATES_FIRST), rng.choice(FIRST_NAME_PAIRS)
        return swap(t.format(f=x), t.format(f=y), k)
    t, (x, y) = rng.choice(NAME_TEMPLATES_SURNAME), rng.choice(SURNAME_PAIRS)
    return swap(t.format(s=x), t.format(s=y), k)


def optional_word(rng: random.Random) -> tuple[str, str]:
    """(with the bracketed word, without it) for a random optional-word template."""
    t = rng.choice(OPTIONAL_WORD_TEMPLATES).format(**shared_slots(rng))
    i, j = t.index("["), t.index("]")
    word = t[i + 1:j]
    with_word = t[:i] + word + t[j + 1:]
    without = (t[:i] + t[j + 1:]).replace("  ", " ").replace(" .", ".").strip()
    if i == 0:  # the word started the sentence: capitalise what is left
        without = without[0].upper() + without[1:]
    return with_word, without


def gen_word_inserted(rng: random.Random, k: int) -> tuple[str, str]:
    """B is A with one short word more."""
    with_word, without = optional_word(rng)
    return without, with_word


def gen_word_dropped(rng: random.Random, k: int) -> tuple[str, str]:
    """B is A with one short word less."""
    return optional_word(rng)


def cmn_change_number(rng: random.Random, kind: str) -> tuple[int, int]:
    """Two numbers for a slot that differ by one confusable digit (一/七, 三/八) or 四/十."""
    limits = {"amount": (10, 999), "count": (2, 99), "label": (1, 30), "hour": (1, 12),
              "month": (1, 12)}
    lo, hi = limits[kind]
    if rng.random() < 0.35:
        a, b = rng.choice([p for p in CMN_FOUR_TEN if p[1] <= hi and p[0] >= lo])
        return (a, b) if rng.random() < 0.5 else (b, a)
    while True:
        a = rng.randint(lo, hi)
        ds = [int(c) for c in str(a)]
        cand = [i for i, d in enumerate(ds) if d in CMN_SUB]
        if not cand:
            continue
        i = rng.choice(cand)
        ds[i] = CMN_SUB[ds[i]]
        b = int("".join(map(str, ds)))
        if lo <= b <= hi and cmn_number(a) != cmn_number(b):
            return a, b


def gen_cmn_digit(rng: random.Random, k: int) -> tuple[str, str]:
    """Mandarin: one digit changed (一/七, 三/八) in a digit string, or a number changed (also 四/十)."""
    t, slot = rng.choice(CMN_DIGIT_TEMPLATES)
    if slot in ("phone", "code"):
        if slot == "phone":
            ds = [1, rng.choice((3, 5, 8)), rng.randrange(10)] + [rng.randrange(10) for _ in range(8)]
            first = 3  # keep the mobile prefix
        else:
            ds = [rng.randrange(10) for _ in range(rng.choice((4, 6)))]
            first = 0
        cand = [i for i in range(first, len(ds)) if ds[i] in CMN_SUB]
        if not cand:
            i = rng.randrange(first, len(ds))
            ds[i] = rng.choice(tuple(CMN_SUB))
            cand = [i]
        i = rng.choice(cand)
        other = list(ds)
        other[i] = CMN_SUB[ds[i]]
        a = t.format(p="".join(CMN_DIGITS[d] for d in ds))
        b = t.format(p="".join(CMN_DIGITS[d] for d in other))
        return swap(a, b, k)
    x, y = cmn_change_number(rng, slot)
    return t.format(n=cmn_number(x)), t.format(n=cmn_number(y))


def gen_pair_list(pairs):
    """Generator drawing from a fixed list of (A, B) sentence pairs, both directions."""
    def gen(rng: random.Random, k: int) -> tuple[str, str]:
        a, b = rng.choice(pairs)
        return swap(a, b, k)

    return gen


GENERATORS = {
    "teen_ty": gen_teen_ty, "digit_string": gen_digit_string, "amount": gen_amount,
    "time": gen_time, "can_cant": gen_modal("can_cant"), "will_wont": gen_modal("will_wont"),
    "is_isnt": gen_modal("is_isnt"), "name_changed": gen_name,
    "word_inserted": gen_word_inserted, "word_dropped": gen_word_dropped,
    "cmn_digit": gen_cmn_digit, "cmn_tone": gen_pair_list(CMN_TONE_PAIRS),
    "cmn_word": gen_pair_list(CMN_WORD_PAIRS),
}
EN_TEXT_KINDS = tuple(k for k in GENERATORS if not k.startswith("cmn"))
CMN_TEXT_KINDS = tuple(k for k in GENERATORS if k.startswith("cmn"))

# --------------------------------------------------------------------------
# Planning (main process only; all randomness lives here)
# --------------------------------------------------------------------------

GOLDEN = (5 ** 0.5 - 1) / 2  # low-discrepancy step: any prefix of cut lengths is spread evenly


def allot(n: int) -> dict[str, int]:
    """Pairs per kind, proportional to KIND_WEIGHTS (largest remainder)."""
    total = sum(KIND_WEIGHTS.values())
    raw = {k: n * w / total for k, w in KIND_WEIGHTS.items()}
    counts = {k: int(v) for k, v in raw.items()}
    order = sorted(KIND_WEIGHTS, key=lambda k: counts[k] - raw[k])  # stable: ties keep order
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


class VoicePicker:
    """Cycles through the base voices (English) or variants (Mandarin) of one kind.

    So every kind uses all eight English base voices and all Mandarin variants,
    whatever its size; the rest (variant, speed, pitch) is random.
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.order = {"en": rng.sample(EN_BASE_VOICES, len(EN_BASE_VOICES)),
                      "cmn": rng.sample(VOICE_VARIANTS, len(VOICE_VARIANTS))}
        self.used = {"en": 0, "cmn": 0}

    def pick(self, lang: str) -> Voice:
        i = self.used[lang]
        self.used[lang] += 1
        if lang == "en":
            base, variant = self.order["en"][i % len(EN_BASE_VOICES)], self.rng.choice(VOICE_VARIANTS)
        else:
            base, variant = CMN_BASE_VOICES[i % len(CMN_BASE_VOICES)], self.order["cmn"][i % len(VOICE_VARIANTS)]
        return Voice(f"{base}+{variant}" if variant else base,
                     self.rng.randint(*SPEED_RANGE), self.rng.randint(*PITCH_RANGE))


def plan_texts(kind: str, k: int, rng: random.Random, voice: Voice, cut_offset: float
               ) -> tuple[str, str, dict | None]:
    """(text_a, text_b, cut) of pair k of `kind` in `voice`."""
    lang = voice.lang
    if kind in CUT_KINDS:
        src = rng.choice(CMN_TEXT_KINDS if lang == "cmn" else EN_TEXT_KINDS)
        core, _ = GENERATORS[src](rng, k)
        text_a, _ = frame_text(rng, core, core, lang, voice.speed, min_s=CUT_MIN_EST)
        lo, hi = CUT_RANGE
        seconds = round(lo + (hi - lo) * ((cut_offset + k * GOLDEN) % 1.0), 3)
        end = CUT_KINDS[kind]
        text_b = (f"{text_a} [final {seconds:.3f} s of speech cut]" if end == "end"
                  else f"[first {seconds:.3f} s of speech cut] {text_a}")
        return text_a, text_b, {"end": end, "seconds": seconds}
    core_a, core_b = GENERATORS[kind](rng, k)
    text_a, text_b = frame_text(rng, core_a, core_b, lang, voice.speed)
    return text_a, text_b, None


def plan_pairs(n: int, seed: int) -> list[dict]:
    """Manifest entries of all pairs, interleaved over the kinds."""
    counts = allot(n)
    pairs = []
    for kind, count in counts.items():
        text_rng = random.Random(f"{seed}:{kind}:text")
        voices = VoicePicker(random.Random(f"{seed}:{kind}:voice"))
        cut_offset = random.Random(f"{seed}:{kind}:cut").random()
        used: set[tuple[str, str]] = set()
        for k in range(count):
            cmn = kind.startswith("cmn") or (kind in CUT_KINDS and k % CUT_CMN_EVERY == CUT_CMN_EVERY - 1)
            voice = voices.pick("cmn" if cmn else "en")
            for _ in range(60):  # retry while the texts repeat or miss the length range
                text_a, text_b, cut = plan_texts(kind, k, text_rng, voice, cut_offset)
                ests = [estimate([t], voice.lang, voice.speed)
                        for t in ((text_a,) if cut else (text_a, text_b))]
                lo = CUT_MIN_EST if cut else EST_RANGE[0]
                if (text_a, text_b) not in used and lo <= min(ests) and max(ests) <= EST_RANGE[1] + 0.5:
                    break
            assert text_a != text_b, (kind, k, text_a)
            used.add((text_a, text_b))
            pid = f"{kind}_{k:03d}"
            pairs.append({
                "id": pid, "kind": kind, "lang": voice.lang, "voice": voice.name,
                "speed": voice.speed, "pitch": voice.pitch, "text_a": text_a, "text_b": text_b,
                "path_a": f"a/{pid}.wav", "path_b": f"b/{pid}.wav", "cut": cut,
                "_order": ((k + 0.5) / count, list(KIND_WEIGHTS).index(kind)),
            })
    pairs.sort(key=lambda p: p["_order"])
    for p in pairs:
        del p["_order"]
    return pairs


def plan_items(pairs: list[dict]) -> tuple[list[Item], list[Item], list[Item], list[Item], list[Item]]:
    """(A syntheses, B syntheses, B cuts, copies of A, limited Bs) as make_corpus Items."""
    a_items, b_synth, b_cut, copies, limited = [], [], [], [], []
    for p in pairs:
        pid, a_rel, b_rel = p["id"], p["path_a"], p["path_b"]
        voice = Voice(p["voice"], p["speed"], p["pitch"])
        a_items.append(Item(pid, a_rel, mc.synth_job(p["text_a"], voice), (), p))
        if p["cut"] is None:
            b_synth.append(Item(pid, b_rel, mc.synth_job(p["text_b"], voice), (), p))
        else:
            job = {"op": "cut", "src": a_rel, **p["cut"], "algo": CUT_ALGO,
                   "frame_s": SPEECH_FRAME_S, "dbfs": SPEECH_DBFS}
            b_cut.append(Item(pid, b_rel, job, (a_rel,), p))
        for name in COPY_TRANSFORMS:
            ext, tool, args = mc.TRANSFORMS[name]
            rel = f"copies/{name}/{pid}.{ext}"
            copies.append(Item(pid, rel, mc.transform_job(tool, args, a_rel, pid), (a_rel,),
                               {"id": pid, "transform": name, "path": rel}))
        ext, tool, args = mc.TRANSFORMS[LIMITED_B]
        rel = f"b_limited/{pid}.{ext}"
        limited.append(Item(pid, rel, mc.transform_job(tool, args, b_rel, pid), (b_rel,),
                            {"id": pid, "transform": LIMITED_B, "path": rel}))
    return a_items, b_synth, b_cut, copies, limited


# --------------------------------------------------------------------------
# Speech bounds and cuts (numpy + wave)
# --------------------------------------------------------------------------


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """Samples (int16, 1-D) and rate of a mono 16-bit WAV."""
    pcm, rate = mc.read_wav(path)
    if pcm.shape[1] != 1:
        raise ValueError(f"{path}: expected mono")
    return pcm[:, 0], rate


def speech_bounds(x: np.ndarray, rate: int) -> tuple[int, int] | None:
    """[start, stop) sample range of the speech in `x`, or None if all is below the threshold.

    Speech frames are the 20 ms frames (from the file start; the last one may be
    partial) whose RMS is above SPEECH_DBFS re 32768.  Speech starts at the
    first sample of the first such frame whose magnitude is above the same
    level, and stops after the last such sample of the last such frame (a frame
    whose RMS exceeds a level always holds a sample that exceeds it).
    """
    flen = max(1, round(rate * SPEECH_FRAME_S))
    n = -(-len(x) // flen)
    if n == 0:
        return None
    padded = np.zeros(n * flen)
    padded[: len(x)] = x
    sizes = np.full(n, flen)
    sizes[-1] = len(x) - (n - 1) * flen
    rms = np.sqrt((padded.reshape(n, flen) ** 2).sum(axis=1) / sizes)
    thr = 32768.0 * 10 ** (SPEECH_DBFS / 20)
    active = np.flatnonzero(rms > thr)
    if active.size == 0:
        return None
    mag = np.abs(x.astype(np.int32))
    f0, f1 = int(active[0]) * flen, int(active[-1]) * flen
    start = f0 + int(np.flatnonzero(mag[f0:f0 + flen] > thr)[0])
    stop = f1 + int(np.flatnonzero(mag[f1:f1 + flen] > thr)[-1]) + 1
    return start, stop


def cut_speech(x: np.ndarray, rate: int, end: str, seconds: float) -> np.ndarray:
    """Remove `seconds` of speech at the `end` ("end"/"start") of x, keeping its silence.

    The kept samples are bit-identical; the silence that followed (preceded) the
    speech is replaced by the same number of zero samples.
    """
    bounds = speech_bounds(x, rate)
    if bounds is None:
        raise ValueError("no speech found")
    start, stop = bounds
    n = round(seconds * rate)
    if stop - start - n < CUT_MIN_LEFT_S * rate:
        raise ValueError(f"only {(stop - start) / rate:.2f} s of speech, cannot cut {seconds} s")
    if end == "end":
        return np.concatenate([x[: stop - n], np.zeros(len(x) - stop, dtype=x.dtype)])
    if end == "start":
        return np.concatenate([np.zeros(start, dtype=x.dtype), x[start + n:]])
    raise ValueError(f"bad cut end {end!r}")


def run_cut(job: dict, out: Path, rel: str) -> dict:
    """Execute a cut recipe, writing atomically to out/rel (same result dict as mc.run_job)."""
    dst = out / rel
    tmp = mc.part_path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        x, rate = read_mono(out / job["src"])
        mc.write_wav(tmp, cut_speech(x, rate, job["end"], job["seconds"]).reshape(-1, 1), rate)
        os.replace(tmp, dst)
        return {"rel": rel, "ok": True, "info": {}}
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        return {"rel": rel, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def run_cuts(items: list[Item], out: Path, hashes: dict[str, str], built: dict[str, str]
             ) -> set[str]:
    """Build the cut files in-process (they take milliseconds); return the failed rels."""
    todo = [it for it in items
            if not ((out / it.rel).exists() and built.get(it.rel) == hashes[it.rel])]
    print(f"[cuts] {len(items)} files: {len(items) - len(todo)} up to date, "
          f"{len(todo)} to build", flush=True)
    failed = set()
    for it in todo:
        res = run_cut(it.job, out, it.rel)
        if res["ok"]:
            built[it.rel] = hashes[it.rel]
        else:
            failed.add(it.rel)
            built.pop(it.rel, None)
            print(f"[cuts] FAILED {it.rel}: {res['error']}", flush=True)
    return failed


# --------------------------------------------------------------------------
# Housekeeping, checks, report
# --------------------------------------------------------------------------


def write_specs(out: Path, built: dict[str, str]) -> None:
    """Save the recipe hashes, sorted (so --jobs does not change the file)."""
    mc.write_json(out / mc.SPECS_FILE, dict(sorted(built.items())))


def prune(out: Path, built: dict[str, str], planned: set[str]) -> None:
    """Delete temporaries of interrupted runs and files an earlier, larger plan built."""
    for sub in SUBDIRS:
        for pattern in mc.TEMP_PATTERNS:
            for p in (out / sub).rglob(pattern):
                p.unlink(missing_ok=True)
    stale = [rel for rel in built if rel not in planned]
    for rel in stale:
        (out / rel).unlink(missing_ok=True)
        del built[rel]
    if stale:
        print(f"[prune] removed {len(stale)} files no longer in the plan", flush=True)


def check_pairs(out: Path, pairs: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """Measure every pair; return (stats by id, problems).

    Problems: A and B with identical samples, a B identical to some other
    pair's A, and cuts whose B does not have (about) `seconds` less speech.
    """
    stats, problems = {}, []
    a_digest = {}
    for p in pairs:
        xa, rate = read_mono(out / p["path_a"])
        xb, _ = read_mono(out / p["path_b"])
        ba, bb = speech_bounds(xa, rate), speech_bounds(xb, rate)
        da = hashlib.sha256(xa.tobytes()).hexdigest()
        db = hashlib.sha256(xb.tobytes()).hexdigest()
        a_digest[da] = p["id"]
        sa = (ba[1] - ba[0]) / rate if ba else 0.0
        sb = (bb[1] - bb[0]) / rate if bb else 0.0
        stats[p["id"]] = {"speech_a": sa, "speech_b": sb, "dur_a": len(xa) / rate,
                          "dur_b": len(xb) / rate, "digest_b": db}
        if da == db:
            problems.append(f"{p['id']}: A and B have identical samples "
                            f"({p['voice']}: {p['text_a']!r} / {p['text_b']!r})")
        if p["cut"] is not None:
            want = sa - p["cut"]["seconds"]
            # Re-measured, B can have up to a frame more speech than A minus
            # the cut (cutting the start shifts the 20 ms frame grid under the
            # end), and may have less: when the cut lands just before a pause
            # between words, that pause becomes B's leading/trailing silence.
            if sb > want + SPEECH_FRAME_S + 1e-9:
                problems.append(f"{p['id']}: speech {sa:.3f} s -> {sb:.3f} s, "
                                f"expected {want:.3f} s after the cut")
            if len(xb) != len(xa) - round(p["cut"]["seconds"] * rate):
                problems.append(f"{p['id']}: B is not A minus the cut in length")
    for p in pairs:
        other = a_digest.get(stats[p["id"]]["digest_b"])
        if other is not None and other != p["id"]:
            problems.append(f"{p['id']}: B has the same samples as the A of {other}")
    return stats, problems


def print_summary(pairs: list[dict], stats: dict[str, dict], n_copies: int, n_failed: int,
                  problems: list[str], out: Path, seconds: float) -> None:
    """Counts and speech durations per kind, then the totals."""
    print(f"\n{'kind':<14} {'pairs':>5} {'en':>4} {'cmn':>4} {'voices':>6} "
          f"{'speech A s (min/median/max)':>28} {'B-A speech s (median)':>22}")
    for kind in KIND_WEIGHTS:
        ps = [p for p in pairs if p["kind"] == kind]
        if not ps:
            continue
        sa = np.array([stats[p["id"]]["speech_a"] for p in ps])
        diff = np.array([stats[p["id"]]["speech_b"] - stats[p["id"]]["speech_a"] for p in ps])
        n_cmn = sum(p["lang"] == "cmn" for p in ps)
        voices = len({p["voice"] for p in ps})
        print(f"{kind:<14} {len(ps):>5} {len(ps) - n_cmn:>4} {n_cmn:>4} {voices:>6} "
              f"{f'{sa.min():.2f} / {np.median(sa):.2f} / {sa.max():.2f}':>28} "
              f"{np.median(diff):>+22.3f}")
    n_cmn = sum(p["lang"] == "cmn" for p in pairs)
    print(f"{'total':<14} {len(pairs):>5} {len(pairs) - n_cmn:>4} {n_cmn:>4} "
          f"{len({p['voice'] for p in pairs}):>6}")
    cuts = [p["cut"]["seconds"] for p in pairs if p["cut"]]
    if cuts:
        print(f"cuts: {len(cuts)}, {min(cuts):.3f}-{max(cuts):.3f} s, "
              f"per 0.1 s band {np.histogram(cuts, bins=3, range=CUT_RANGE)[0].tolist()}")
    all_s = np.array([s[k] for s in stats.values() for k in ("speech_a", "speech_b")])
    if all_s.size:
        print(f"speech per file: {all_s.min():.2f}-{all_s.max():.2f} s, median {np.median(all_s):.2f} s")
    print(f"copies of A: {n_copies} ({len(COPY_TRANSFORMS)} transforms); failed files: {n_failed}; "
          f"problems: {len(problems)}")
    for msg in problems:
        print(f"  PROBLEM {msg}")
    size = sum(p.stat().st_size for sub in SUBDIRS for p in (out / sub).rglob("*") if p.is_file())
    print(f"total size: {size / 1e6:.1f} MB under {out}; wall time {seconds:.0f}s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory ({DEFAULT_OUT})")
    ap.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help=f"number of pairs ({DEFAULT_PAIRS})")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (2)")
    ap.add_argument("--seed", type=int, default=mc.DEFAULT_SEED, help=f"master seed ({mc.DEFAULT_SEED})")
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.jobs < 1:
        ap.error("--pairs and --jobs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Plan, synthesise A and B, build the copies and the cuts, check, write the manifest."""
    args = parse_args(argv)
    t0 = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    pairs = plan_pairs(args.pairs, args.seed)
    a_items, b_synth, b_cut, copies, limited = plan_items(pairs)
    hashes = mc.recipe_hashes(a_items, {})
    hashes = mc.recipe_hashes(b_synth + b_cut + copies, hashes)
    hashes = mc.recipe_hashes(limited, hashes)
    built = mc.load_specs(out)
    prune(out, built, set(hashes))

    failed: set[str] = set()
    try:
        f, _ = mc.run_phase("synth", a_items + b_synth, out, args.jobs, hashes, built)
        failed |= f
        write_specs(out, built)
        copies = [c for c in copies if c.deps[0] not in failed]
        b_cut = [c for c in b_cut if c.deps[0] not in failed]
        f, _ = mc.run_phase("copies", copies, out, args.jobs, hashes, built)
        failed |= f
        failed |= run_cuts(b_cut, out, hashes, built)
        limited = [b for b in limited if b.deps[0] not in failed]
        f, _ = mc.run_phase("limited B", limited, out, args.jobs, hashes, built)
        failed |= f
    finally:
        write_specs(out, built)

    pairs = [p for p in pairs if p["path_a"] not in failed and p["path_b"] not in failed]
    stats, problems = check_pairs(out, pairs)
    bad = {msg.split(":", 1)[0] for msg in problems}
    pairs_ok = [p for p in pairs if p["id"] not in bad]
    kept = {p["id"] for p in pairs_ok}
    manifest = {
        "pairs": pairs_ok,
        "copies": [c.meta for c in copies if c.rel not in failed and c.id in kept],
        "limited_b": [b.meta for b in limited if b.rel not in failed and b.id in kept],
    }
    mc.write_json(out / mc.MANIFEST_FILE, manifest)
    print_summary(pairs, stats, len(manifest["copies"]), len(failed), problems, out,
                  time.monotonic() - t0)
    if bad:
        print(f"{len(bad)} pairs with problems were left out of the manifest")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
