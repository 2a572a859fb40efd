#!/usr/bin/env python3
"""Build the accuracy-benchmark corpus for earmark's fuzzy-matching tier.

The corpus has four parts, all written under ``--out``:

* ``originals/``  - WAV files synthesised with espeak-ng (English and Mandarin,
  many voices, speeds and pitches, 1 s to 60 s).  These are what the cache has
  seen before.
* ``transforms/<transform>/`` - every original re-encoded / degraded with real
  tools (ffmpeg, sox) or numpy.  A good fuzzy matcher should map each of these
  back to its original.
* ``cut_copies/<transform>/`` - every original under NEGATIVE_TRANSFORMS:
  copies that lost some speech, so by our rules a different recording (listed
  under ``cut_copies`` in the manifest, not ``transforms``).  A good matcher
  must reject these.
* ``negatives/`` - clips that are *not* any original, many of them hard
  (same voice, shared text, prefixes/suffixes...).  A good matcher must reject
  these.

``manifest.json`` describes everything, with paths relative to ``--out``.

The build is deterministic: all choices come from ``random.Random`` /
``numpy`` generators seeded from ``--seed``, and the external tools are run in
their bit-exact / repeatable modes.  It is idempotent: a hidden
``.specs.json`` records a hash of the recipe of every file, and files whose
recipe is unchanged are skipped on the next run (changed recipes are rebuilt).
Files of a transform that was renamed (same recipe) are moved to the new name
rather than rebuilt; files of a transform that was removed are deleted.

Usage::

    python bench/make_corpus.py --out bench/data/corpus [--originals 200] \
        [--negatives 200] [--jobs 2] [--seed 1234] [--verify]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
import wave
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

DEFAULT_SEED = 20241124
RECIPE_VERSION = 1  # bump to force every file to be rebuilt

ESPEAK = "espeak-ng"
FFMPEG = "ffmpeg"
SOX = "sox"

SPEED_RANGE = (120, 200)  # espeak-ng -s, words per minute
PITCH_RANGE = (30, 70)  # espeak-ng -p, 0..99

# "en" *is* British English (gmw/en).  "en-gb" is deliberately absent: with
# espeak-ng 1.51 "en-gb+m3" silently ignores the variant and sounds exactly
# like plain "en", which would create byte-identical "different" voices.
EN_BASE_VOICES = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
CMN_BASE_VOICES = ("cmn",)
VOICE_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")

# Every CMN_EVERY-th original (and negative of each kind) is Mandarin: ~17 %.
CMN_EVERY = 6
# Duration bucket of original i is DURATION_PATTERN[i % 20]: 15 % short,
# 10 % long, 75 % medium, spread so any prefix of the corpus is mixed.  Short
# and long slots include odd positions so they coincide with Mandarin slots
# (i % 6 == 5) too: per 60 originals, 2 of 9 short and 1 of 6 long are Mandarin.
DURATION_PATTERN = ("short", "medium", "medium", "medium", "medium", "long", "medium",
                    "short", "medium", "medium", "medium", "medium", "medium",
                    "short", "medium", "medium", "long", "medium", "medium", "medium")
# Short phrases are picked so their estimated duration lands inside 1-3 s.
SHORT_EST_RANGE = (1.25, 2.8)
# (target low, target high, hard upper bound) of the *estimated* duration, s.
BUCKET_TARGETS = {"medium": (3.5, 18.0, 20.0), "long": (34.0, 54.0, 58.0)}

# Every HELD_OUT_EVERY-th sentence/phrase is never used in an original; the
# negatives draw their "new" text from these so it is genuinely unseen.
HELD_OUT_EVERY = 5

# Empirical espeak-ng timing (measured with 1.51): seconds at the reference
# speed, used only to aim at the duration buckets.
EN_SEC_PER_SENTENCE = 0.45
EN_SEC_PER_CHAR = 0.058
EN_REF_SPEED = 160
CMN_SEC_PER_CHAR = 0.54
CMN_REF_SPEED = 120

NOISE_SNR_DB = 30.0
NOISE_FRAME_S = 0.02  # frames for the "active speech" RMS
NOISE_ACTIVE_DB = -35.0  # frames within this of the loudest frame count as speech

FFMPEG_COMMON = ("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
FFMPEG_BITEXACT = ("-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact")
SOX_COMMON = ("-R", "-D", "-V1")  # repeatable, no dither (padding stays digital zero)

# Trailing-silence trim threshold: a sample is kept if it is louder than this
# (dBFS re 32768).  espeak-ng ends every file with 0.01-0.58 s of decay that
# stays below it; the speech thresholds used elsewhere are -45 to -35 dBFS.
TRIM_SILENCE_DBFS = -60.0

# name -> (extension, tool, arguments).  ffmpeg arguments go between input and
# output; sox arguments are the effect chain after the output file.  Tools:
# "ffmpeg", "sox", "noise" (arguments: SNR in dB), "trim_silence" (arguments:
# threshold in dBFS) and "ffmpeg_decoded" (arguments: raw format, encoder
# arguments): encode to that raw format, then decode it back to a 16-bit WAV.
TRANSFORMS: dict[str, tuple[str, str, tuple]] = {
    "mp3_32k": ("mp3", "ffmpeg", ("-c:a", "libmp3lame", "-b:a", "32k")),
    "mp3_64k": ("mp3", "ffmpeg", ("-c:a", "libmp3lame", "-b:a", "64k")),
    "mp3_128k": ("mp3", "ffmpeg", ("-c:a", "libmp3lame", "-b:a", "128k")),
    # MPEG-2 (22.05 kHz) mp3 tops out at 160 kbit/s; 320k needs 44.1 kHz.
    "mp3_320k": ("mp3", "ffmpeg", ("-c:a", "libmp3lame", "-b:a", "320k", "-ar", "44100")),
    "aac_64k": ("m4a", "ffmpeg", ("-c:a", "aac", "-b:a", "64k")),
    # libopus does not accept 22.05 kHz input.
    "opus_24k": ("opus", "ffmpeg", ("-c:a", "libopus", "-b:a", "24k", "-ar", "48000")),
    "vorbis": ("ogg", "ffmpeg", ("-c:a", "libvorbis", "-q:a", "4")),
    "flac": ("flac", "ffmpeg", ("-c:a", "flac")),
    "wav_8k": ("wav", "sox", ("rate", "-v", "8000")),
    "wav_22k": ("wav", "sox", ("rate", "-v", "22050")),
    "wav_44k": ("wav", "sox", ("rate", "-v", "44100")),
    "wav_48k": ("wav", "sox", ("rate", "-v", "48000")),
    "stereo": ("wav", "sox", ("channels", "2")),
    "gain_minus6": ("wav", "sox", ("gain", "-6")),
    "gain_plus6": ("wav", "sox", ("gain", "-l", "6")),  # -l: limiter, no hard clipping
    "pad_start_0_5": ("wav", "sox", ("pad", "0.5", "0")),
    # Pad 0.5 s of digital silence, then trim 0.3 s of it: what remains is the
    # whole original behind 0.2 s of silence (a trimmed, padded export).
    "pad_trim_start": ("wav", "sox", ("pad", "0.5", "0", "trim", "0.3")),
    # Drop everything after the last sample above TRIM_SILENCE_DBFS (numpy).
    # Not sox "reverse silence 1 0.01 -60d reverse": its RMS window cut up to
    # 0.13 s of the decay above -60 dBFS and a few samples above -45 dBFS.
    "trim_silence_end": ("wav", "trim_silence", (TRIM_SILENCE_DBFS,)),
    "noise_30db": ("wav", "noise", (NOISE_SNR_DB,)),
    # Telephone codecs (real encoders), all mono.  GSM 06.10 and G.726 are
    # stored in WAV (format tags 0x31 and 0x45), which PyAV decodes as is;
    # GSM pads the end to a 40 ms (320-sample) frame pair.
    "gsm_8k": ("wav", "ffmpeg", ("-c:a", "libgsm_ms", "-ar", "8000", "-ac", "1")),
    "g726_16k": ("wav", "ffmpeg", ("-c:a", "g726", "-b:a", "16k", "-ar", "8000", "-ac", "1")),
    # G.723.1 has no container PyAV can sniff (raw .tco is recognised only by
    # its name), so the stored copy is the decoded 8 kHz 16-bit WAV, which is
    # what a telephone line would deliver; frames pad the end to 30 ms.
    "g723_1": ("wav", "ffmpeg_decoded",
               ("g723_1", ("-c:a", "g723_1", "-b:a", "6.3k", "-ar", "8000", "-ac", "1"))),
    "opus_8k": ("opus", "ffmpeg", ("-c:a", "libopus", "-b:a", "8k", "-ar", "48000")),
    "mp3_16k_11k": ("mp3", "ffmpeg", ("-c:a", "libmp3lame", "-b:a", "16k", "-ar", "11025")),
    "ulaw_8k": ("wav", "ffmpeg", ("-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1")),
}

# Copies that lose speech: by our rules a different recording, so they are
# listed in the manifest under "cut_copies" (must be refused), not under
# "transforms".  espeak-ng starts speaking at once (first sample above -45 dBFS
# at 0-66 ms in the default build), so trimming 0.3 s always removes speech.
# cut_start_0_3 was the true-copy transform "trim_start_0_3" until that was noticed.
NEGATIVE_TRANSFORMS: dict[str, tuple[str, str, tuple]] = {
    "cut_start_0_3": ("wav", "sox", ("trim", "0.3")),
}
# Output subdirectory of each transform family.
TRANSFORM_DIRS = {"transforms": TRANSFORMS, "cut_copies": NEGATIVE_TRANSFORMS}

NEGATIVE_KINDS = (
    "same_voice_same_first_half", "prefix_30", "prefix_50", "suffix_50",
    "original_plus_more", "same_voice_different_sentence",
    "different_voice_same_sentence", "unrelated",
)
# Kinds whose source should be long enough for cutting to leave real speech.
MIN_SOURCE_S = 3.0
NEEDS_LONG_SOURCE = {"same_voice_same_first_half", "prefix_30", "prefix_50", "suffix_50"}

SPECS_FILE = ".specs.json"
TEMP_PATTERNS = ("*.part.*", "*.extra.*", "*.coded.*")  # temporaries (see part_path)
MANIFEST_FILE = "manifest.json"

# --------------------------------------------------------------------------
# Texts (written for this corpus; no external data)
# --------------------------------------------------------------------------

EN_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Please remember to lock the back door before you leave tonight.",
    "The meeting has been moved to Thursday afternoon at three o'clock.",
    "My grandmother grew tomatoes, beans, and sunflowers in her garden.",
    "Could you tell me how to get to the nearest train station?",
    "The museum will be closed for renovations until the end of March.",
    "He poured a cup of coffee and stared out at the falling snow.",
    "Our flight was delayed by two hours because of a storm over Chicago.",
    "Scientists have discovered a new species of frog in the rainforest.",
    "The children built a sandcastle with towers, walls, and a moat.",
    "Turn left at the bakery and walk straight for about five minutes.",
    "She practised the violin every evening until her fingers ached.",
    "The stock market closed slightly higher after a volatile week.",
    "A warm bowl of soup is the best cure for a rainy afternoon.",
    "The library offers free computer classes for adults on Saturdays.",
    "I can't believe how quickly this year has gone by.",
    "The mechanic said the brakes need to be replaced soon.",
    "Fresh bread from the oven filled the whole house with a wonderful smell.",
    "Do you prefer mountains or beaches when you go on holiday?",
    "The committee approved the new budget by a narrow margin.",
    "Thousands of birds gathered on the lake before flying south for the winter.",
    "Please send me the report by Friday so I can review it over the weekend.",
    "The old bridge was built more than two hundred years ago.",
    "He forgot his umbrella and arrived at work completely soaked.",
    "Learning a new language takes patience, practice, and a sense of humour.",
    "The orchestra tuned their instruments as the audience found their seats.",
    "Our neighbours are throwing a party to celebrate their anniversary.",
    "The recipe calls for two eggs, a cup of flour, and a pinch of salt.",
    "Why did the chicken cross the road in the middle of the night?",
    "Satellites orbiting the earth help us predict the weather.",
    "The bus driver waited patiently while an elderly man climbed aboard.",
    "Nobody expected the small team to win the championship.",
    "You should drink plenty of water when the weather is this hot.",
    "The painting sold at auction for more than four million dollars.",
    "A gentle breeze carried the scent of pine trees across the valley.",
    "The software update fixed several bugs and improved battery life.",
    "I'll call you back as soon as I get out of this meeting.",
    "The river flooded the fields after a week of heavy rain.",
    "Every morning the baker wakes up at four to prepare the dough.",
    "The detective examined the muddy footprints near the window.",
    "Would you like your receipt in the bag or in your hand?",
    "The hikers reached the summit just before the sun went down.",
    "Our cat spends most of the day sleeping on the windowsill.",
    "The new hospital wing will open to patients next spring.",
    "Please keep your seatbelt fastened until the aircraft comes to a complete stop.",
    "The professor explained the theory with a simple drawing on the board.",
    "It took them three days to drive across the desert.",
    "The lighthouse keeper lit the lamp as the fog rolled in.",
    "Make sure you save your work before shutting down the computer.",
    "The festival attracts musicians and artists from all over the world.",
    "He wrote a letter to his younger self full of advice and apologies.",
    "The price of fresh vegetables has gone up again this month.",
    "A small boat drifted slowly toward the rocky shore.",
    "The students were asked to write an essay about climate change.",
    "I think we took a wrong turn somewhere after the last village.",
    "The volcano has been quiet for nearly a hundred years.",
    "She opened the envelope and gasped at what she read inside.",
    "The team will present their findings at the conference in June.",
    "Honey never spoils if it is stored in a sealed container.",
    "The kettle whistled loudly in the empty kitchen.",
    "Our garden is full of bees and butterflies in the summer.",
    "The pilot announced that we would be landing in twenty minutes.",
    "Could you please speak a little more slowly?",
    "The ancient city was buried under ash for centuries.",
    "Traffic on the motorway was backed up for several miles.",
    "A good night's sleep can improve your memory and your mood.",
    "The chef added a splash of lemon juice to brighten the sauce.",
    "The puppy chased its tail around the living room.",
    "Voting stations will remain open until eight o'clock this evening.",
    "The glacier has retreated more than a kilometre in the past fifty years.",
    "He tightened the last screw and stepped back to admire the bookshelf.",
    "The phone rang three times and then stopped.",
    "Our teacher read us a story about a dragon who was afraid of the dark.",
    "The farmers are hoping for rain before the harvest.",
    "Be careful, the floor is still wet from the mopping.",
    "The train to Edinburgh departs from platform nine.",
    "Astronomers observed a bright comet passing close to the sun.",
    "She found an old photograph hidden between the pages of a book.",
    "The city council plans to plant ten thousand trees next year.",
    "I usually go jogging in the park before breakfast.",
    "The waiter recommended the grilled fish with roasted potatoes.",
    "Strong winds knocked down power lines across the region.",
    "The little boy proudly showed everyone his missing front tooth.",
    "Please wash your hands before sitting down to eat.",
    "The factory produces over a thousand bicycles every week.",
    "They watched the fireworks from the roof of their apartment building.",
    "The documentary follows a family of elephants across the savanna.",
    "My laptop battery died right in the middle of the presentation.",
    "A single candle lit the narrow stone staircase.",
    "The doctor advised him to take the medicine twice a day.",
    "We should leave early to avoid the rush hour traffic.",
    "The violinist bowed as the audience rose to their feet.",
    "Wild horses still roam freely on the island.",
    "The bakery on the corner sells the best croissants in town.",
    "Can you believe it snowed in the middle of May?",
    "The engineers tested the bridge with heavy trucks before it opened.",
    "Her favourite colour has always been a deep shade of green.",
    "The marathon runners crossed the finish line one by one.",
    "I left my keys on the kitchen table again.",
    "The submarine descended slowly into the dark water.",
    "Our internet connection has been unreliable all week.",
    "The king's crown was decorated with rubies and pearls.",
    "Remember to water the plants while I'm away.",
    "The crowd cheered when the band finally walked on stage.",
    "Penguins huddle together to stay warm during the long winter.",
    "The author signed copies of her new novel at the bookshop.",
    "The printer on the second floor is out of paper.",
    "A rainbow appeared over the hills after the storm.",
    "He spent the whole weekend repainting the fence.",
    "The moon looked enormous as it rose above the horizon.",
    "Several passengers complained about the noise on the night train.",
    "The soup needs a little more salt and pepper.",
    "The children giggled as the clown pulled a rabbit from his hat.",
    "Our company is looking for a new office closer to the city centre.",
    "The wind turbines turned slowly on the hillside.",
    "I'm sorry, but the shop closes in ten minutes.",
    "The archaeologists uncovered pottery that was three thousand years old.",
    "She tied a red ribbon around the birthday present.",
    "The ferry crossing was rough, and many passengers felt seasick.",
    "Let's meet at the cafe across the street from the cinema.",
    "The spacecraft sent back stunning images of Jupiter's clouds.",
    "My brother is learning to play the drums, much to our neighbours' dismay.",
    "The hotel room had a beautiful view of the harbour.",
    "Lightning struck the old oak tree in the middle of the field.",
    "Please fill out this form and return it to the front desk.",
    "The fisherman mended his nets while humming an old tune.",
    "The cost of the project has doubled since last year.",
    "A flock of sheep blocked the narrow country road.",
    "The students cheered when the teacher cancelled the test.",
    "He always orders the same sandwich at the same deli.",
    "The firefighters rescued a kitten from the top of a tall tree.",
    "Our holiday photos are finally printed and in an album.",
    "The northern lights danced across the sky in green and purple waves.",
    "Don't forget to bring a jacket, it gets cold at night.",
    "The new law will come into effect on the first of January.",
    "A strange noise woke me up in the middle of the night.",
    "The gardener trimmed the hedges into the shape of animals.",
    "The recipe works just as well with almond milk.",
    "The queue for the roller coaster stretched around the corner.",
    "She laughed so hard that tears ran down her cheeks.",
    "The old clock on the wall stopped at a quarter past twelve.",
    "Researchers are testing a vaccine that could prevent the disease.",
    "We ran out of milk, so I had my cereal with orange juice.",
    "The mountain village is only reachable by a winding dirt road.",
    "The referee blew the whistle and the match was over.",
    "I need to renew my passport before our trip to Canada.",
    "The smell of rain on dry earth is one of my favourite things.",
    "The robot vacuum got stuck under the sofa again.",
    "Hundreds of volunteers helped clean up the beach on Sunday.",
    "His handwriting is so messy that nobody can read his notes.",
    "The candle flickered and went out as the door swung open.",
    "We planted an apple tree when our daughter was born.",
    "The newspaper printed a correction the following morning.",
    "A thick layer of frost covered the car windows this morning.",
    "The singer forgot the words halfway through the second verse.",
    "Remember that the deadline for applications is next Monday.",
    "The tortoise crossed the garden slowly but steadily.",
    "Our team meeting will be held online this week.",
    "The castle walls were more than three metres thick.",
    "She balanced a stack of books on her head as she walked.",
    "The elevator is out of order, so please use the stairs.",
    "The waves crashed against the cliffs with tremendous force.",
    "My uncle tells the same joke at every family dinner.",
    "The government announced new measures to reduce air pollution.",
    "A lonely wolf howled somewhere in the distant hills.",
    "Please turn off your mobile phones during the performance.",
    "The bakery ran out of bread before nine in the morning.",
    "The astronauts spent six months aboard the space station.",
    "He carefully folded the map and put it in his pocket.",
    "The parade will start at noon outside the town hall.",
    "What time does the pharmacy open on Sundays?",
    "The artist mixed blue and yellow paint to create the perfect green.",
    "Our dog barks every time the postman comes to the door.",
    "The storm passed, leaving the streets covered in leaves and branches.",
    "I have never seen so many stars in the night sky.",
    "The cyclist fixed a flat tyre on the side of the road.",
    "The conference room is booked for the entire afternoon.",
    "The twins look alike, but their personalities are completely different.",
    "Dinner is ready, so please come to the table.",
    "A thin crescent moon hung low over the sleeping town.",
)

EN_SHORT = (
    "Good morning, everyone.", "Thank you very much.", "See you tomorrow.",
    "Where is the exit?", "Happy birthday!", "Not right now.", "That sounds great.",
    "Turn it off.", "Call me later.", "What time is it?", "I'm on my way.",
    "Open the window.", "Excuse me, please.", "Let's go home.", "Nice to meet you.",
    "Hold on a second.", "Yes, of course.", "No problem at all.", "Close the door.",
    "How much is this?", "Watch your step.", "Good night.", "Well done!",
    "Take a seat.", "Is anyone there?", "I don't know.", "Play some music.",
    "Stop the timer.", "Welcome back.", "Be right there.", "Try again later.",
    "Lights on.", "Next song, please.", "It's raining again.", "Keep it down.",
    "Check the weather.",
)

CMN_SENTENCES = (
    "今天天气很好，我们去公园散步吧。",
    "他每天早上七点起床，然后骑自行车去公司上班。",
    "请问最近的地铁站怎么走？",
    "妈妈在厨房里做红烧肉，整个房子都很香。",
    "这本书我已经看了三遍，每次都有新的收获。",
    "明天下午三点我们在会议室开会。",
    "我的手机没电了，能借你的充电器用一下吗？",
    "小猫在窗台上晒太阳，看起来非常舒服。",
    "这家餐厅的饺子特别好吃，价格也不贵。",
    "周末我们打算带孩子去动物园看熊猫。",
    "火车晚点了两个小时，大家都很着急。",
    "他学习中文已经五年了，说得非常流利。",
    "外面下大雨了，出门记得带伞。",
    "老师让我们写一篇关于环境保护的作文。",
    "这座桥是一百多年前建成的。",
    "我最喜欢的季节是秋天，因为不冷也不热。",
    "超市里的水果今天打八折。",
    "飞机马上就要起飞了，请系好安全带。",
    "奶奶每天晚上都在院子里跳广场舞。",
    "这个问题很复杂，我们需要再讨论一下。",
    "春节的时候，全家人都会回老家吃团圆饭。",
    "他把钥匙忘在办公室了，只好打电话给同事。",
    "山顶的风景美极了，可以看到整个城市。",
    "医生建议他多喝水，早点休息。",
    "图书馆周一到周五晚上九点关门。",
    "我们班的足球队赢得了学校比赛的冠军。",
    "这条河以前很脏，现在变得清澈多了。",
    "你喜欢喝茶还是喝咖啡？",
    "昨天晚上我做了一个很奇怪的梦。",
    "新开的商场里人山人海，热闹极了。",
    "请把这份文件复印三份，放在我的桌子上。",
    "孩子们在雪地里堆了一个大雪人。",
    "这部电影讲述了一个关于友谊的感人故事。",
    "每年秋天，很多候鸟会飞到南方过冬。",
    "他一边听音乐，一边认真地做作业。",
    "公交车上人太多了，我们还是走路去吧。",
    "爷爷年轻的时候是一名火车司机。",
    "这个蛋糕是我第一次自己做的，味道还不错。",
    "天气预报说明天会有大风，还会降温。",
    "我们公司下个月要搬到新的办公楼。",
    "她在花园里种了很多玫瑰和向日葵。",
    "晚饭以后，我们一家人常常出去散步。",
    "这个城市的夜景非常漂亮，尤其是江边。",
    "请大家安静一下，会议马上开始。",
    "他从小就梦想成为一名宇航员。",
    "妹妹养了两条金鱼，每天都按时喂它们。",
    "这条路正在修，请从旁边绕过去。",
    "我们应该节约用水，保护地球的资源。",
    "邮局就在银行的对面，很容易找到。",
    "窗外传来了清脆的鸟叫声。",
)

CMN_SHORT = (
    "你好。", "谢谢你。", "再见。", "早上好。", "没问题。", "请坐。",
    "对不起。", "生日快乐！", "开灯。", "几点了？", "我到了。", "下雨了。",
    "明天见。", "太好了！", "请进来。",
)

# --------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice plus prosody; "same voice" means all three match."""

    name: str  # e.g. "en-us+m3"
    speed: int
    pitch: int

    @property
    def lang(self) -> str:
        """Language code used in the manifest ("en" or "cmn")."""
        return "cmn" if self.name.startswith("cmn") else "en"


@dataclass
class Item:
    """One planned output file: where it goes, how to make it, what it is."""

    id: str
    rel: str  # path relative to --out
    job: dict  # picklable recipe executed by run_job()
    deps: tuple[str, ...] = ()  # rel paths this file is derived from
    meta: dict = field(default_factory=dict)  # manifest fields


@dataclass(frozen=True)
class TextPools:
    """Sentences/phrases of one language split into seen (originals) and held-out."""

    lang: str
    sentences: tuple[str, ...]
    short: tuple[str, ...]
    held_sentences: tuple[str, ...]
    held_short: tuple[str, ...]


def split_held_out(texts: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a list into (used by originals, held out for negatives)."""
    seen = tuple(t for i, t in enumerate(texts) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1)
    held = tuple(t for i, t in enumerate(texts) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)
    return seen, held


def make_pools() -> dict[str, TextPools]:
    """Build the per-language text pools from the constant lists."""
    pools = {}
    for lang, sents, short in (("en", EN_SENTENCES, EN_SHORT), ("cmn", CMN_SENTENCES, CMN_SHORT)):
        s_seen, s_held = split_held_out(sents)
        p_seen, p_held = split_held_out(short)
        pools[lang] = TextPools(lang, s_seen, p_seen, s_held, p_held)
    return pools


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def join_parts(parts: list[str], lang: str) -> str:
    """Join sentences the way each language writes them (no spaces in Chinese)."""
    return ("" if lang == "cmn" else " ").join(parts)


def estimate_seconds(parts: list[str], lang: str, speed: int) -> float:
    """Rough espeak-ng duration of the sentences at `speed` (used only for targeting)."""
    if lang == "cmn":
        return sum(len(p) for p in parts) * CMN_SEC_PER_CHAR * CMN_REF_SPEED / speed
    per = sum(EN_SEC_PER_SENTENCE + EN_SEC_PER_CHAR * len(p) for p in parts)
    return per * EN_REF_SPEED / speed


def compose_parts(rng: random.Random, sentences: tuple[str, ...], lang: str, speed: int,
                  target: float, upper: float) -> list[str]:
    """Pick distinct random sentences until the estimate reaches `target` but stays <= `upper`."""
    order = list(sentences)
    rng.shuffle(order)
    parts = [order.pop()]
    while order and estimate_seconds(parts, lang, speed) < target:
        for k in range(len(order) - 1, -1, -1):
            if estimate_seconds(parts + [order[k]], lang, speed) <= upper:
                parts.append(order.pop(k))
                break
        else:
            break
    return parts


def text_units(text: str, lang: str) -> list[str]:
    """Words for English, characters for Mandarin (the unit for cutting text)."""
    return list(text) if lang == "cmn" else text.split()


def units_to_text(units: list[str], lang: str) -> str:
    """Inverse of text_units()."""
    return "".join(units) if lang == "cmn" else " ".join(units)


def slice_text(text: str, lang: str, start: float, end: float) -> str:
    """Approximate text of the [start, end) fraction of an utterance (by words/chars)."""
    units = text_units(text, lang)
    a, b = round(len(units) * start), round(len(units) * end)
    return units_to_text(units[a:max(b, a + 1)], lang)


# --------------------------------------------------------------------------
# Planning (main process only; all randomness lives here)
# --------------------------------------------------------------------------


def random_voice(rng: random.Random, lang: str) -> Voice:
    """A random espeak voice/variant with random speed and pitch."""
    base = rng.choice(CMN_BASE_VOICES if lang == "cmn" else EN_BASE_VOICES)
    variant = rng.choice(VOICE_VARIANTS)
    return Voice(f"{base}+{variant}" if variant else base,
                 rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE))


def other_voice(rng: random.Random, voice: Voice) -> Voice:
    """A different voice name of the same language, keeping speed and pitch (harder negative)."""
    while True:
        cand = random_voice(rng, voice.lang)
        if cand.name != voice.name:
            return Voice(cand.name, voice.speed, voice.pitch)


def synth_job(text: str, voice: Voice) -> dict:
    """Recipe: synthesise `text` with `voice` to a WAV."""
    return {"op": "synth", "text": text, "voice": voice.name,
            "speed": voice.speed, "pitch": voice.pitch}


def original_meta(oid: str, rel: str, text: str, voice: Voice) -> dict:
    """Manifest entry of an original (duration filled in after synthesis)."""
    return {"id": oid, "path": rel, "text": text, "voice": voice.name, "lang": voice.lang,
            "speed": voice.speed, "pitch": voice.pitch, "duration_s": None}


def plan_originals(n: int, seed: int, pools: dict[str, TextPools]) -> list[Item]:
    """Decide text, voice, speed and pitch of every original."""
    rng = random.Random(f"{seed}:originals")
    used: set[str] = set()
    items = []
    for i in range(n):
        lang = "cmn" if i % CMN_EVERY == CMN_EVERY - 1 else "en"
        bucket = DURATION_PATTERN[i % len(DURATION_PATTERN)]
        voice = random_voice(rng, lang)
        parts = pick_original_parts(rng, pools[lang], bucket, voice.speed, used)
        text = join_parts(parts, lang)
        used.add(text)
        oid = f"o{i:04d}"
        rel = f"originals/{oid}.wav"
        meta = original_meta(oid, rel, text, voice)
        items.append(Item(oid, rel, synth_job(text, voice), (),
                          {**meta, "_parts": parts, "_voice": voice}))
    return items


def pick_original_parts(rng: random.Random, pool: TextPools, bucket: str, speed: int,
                        used: set[str], tries: int = 20) -> list[str]:
    """Sentences for one original in `bucket`, preferring a text no other original has."""
    parts: list[str] = []
    for _ in range(tries):
        if bucket == "short":
            parts = [rng.choice(fitting_short(pool.short, pool.lang, speed))]
        else:
            lo, hi, upper = BUCKET_TARGETS[bucket]
            parts = compose_parts(rng, pool.sentences, pool.lang, speed, rng.uniform(lo, hi), upper)
        if join_parts(parts, pool.lang) not in used:
            break
    return parts


def fitting_short(phrases: tuple[str, ...], lang: str, speed: int) -> tuple[str, ...]:
    """Phrases whose estimated duration at `speed` is within SHORT_EST_RANGE (all if none)."""
    lo, hi = SHORT_EST_RANGE
    fit = tuple(p for p in phrases if lo <= estimate_seconds([p], lang, speed) <= hi)
    return fit or phrases


def transform_job(tool: str, args: tuple, src: str, seed_key: str) -> dict:
    """The recipe applying one TRANSFORMS entry's (tool, args) to the file `src`."""
    if tool == "noise":
        return {"op": "noise", "src": src, "snr_db": args[0], "seed_key": seed_key}
    return {"op": tool, "src": src,
            "args": [list(a) if isinstance(a, tuple) else a for a in args]}


def plan_transforms(originals: list[Item], subdir: str = "transforms") -> list[Item]:
    """One item per (original, transform of the TRANSFORM_DIRS[subdir] family)."""
    items = []
    for o in originals:
        for name, (ext, tool, args) in TRANSFORM_DIRS[subdir].items():
            rel = f"{subdir}/{name}/{o.id}.{ext}"
            items.append(Item(o.id, rel, transform_job(tool, args, o.rel, o.id), (o.rel,),
                              {"id": o.id, "transform": name, "path": rel}))
    return items


@dataclass
class NegativeContext:
    """Everything a negative builder needs to pick sources and new text."""

    rng: random.Random
    pools: dict[str, TextPools]
    originals: dict[str, list[Item]]  # by language
    durations: dict[str, float]
    taken: set[tuple[str, str, int, int]]  # (text, voice, speed, pitch) of originals
    used_sources: set[tuple[str, str]] = field(default_factory=set)  # (kind, original id)


def pick_source(ctx: NegativeContext, kind: str, lang: str, min_s: float) -> Item:
    """A random original of `lang` (any language if none) for `kind`.

    Prefers originals at least `min_s` long and not yet used for this kind, so
    the negatives of one kind spread over many originals.
    """
    cands = ctx.originals.get(lang) or [o for v in ctx.originals.values() for o in v]
    long_enough = [o for o in cands if ctx.durations[o.id] >= min_s] or cands
    fresh = [o for o in long_enough if (kind, o.id) not in ctx.used_sources] or long_enough
    src = ctx.rng.choice(fresh)
    ctx.used_sources.add((kind, src.id))
    return src


def new_text_like(ctx: NegativeContext, lang: str, speed: int, seconds: float) -> list[str]:
    """Held-out (never in an original) sentences of roughly `seconds` duration."""
    pool = ctx.pools[lang]
    if seconds < 3.0:
        return [ctx.rng.choice(fitting_short(pool.held_short, lang, speed))]
    return compose_parts(ctx.rng, pool.held_sentences, lang, speed, seconds * 0.9,
                         max(seconds * 1.3, seconds + 3.0))


def trim_job(src: Item, dur: float, start: float, end: float) -> dict:
    """Recipe: cut the [start, end) fraction of an original with sox trim."""
    return {"op": "sox", "src": src.rel,
            "args": ["trim", f"{dur * start:.4f}", f"{dur * (end - start):.4f}"]}


def build_negative(ctx: NegativeContext, kind: str, lang: str) -> tuple[dict, str, Voice, str | None]:
    """Return (job, text, voice, source_id) for one negative of `kind`."""
    rng = ctx.rng
    if kind == "unrelated":
        voice = random_voice(rng, lang)
        parts = new_text_like(ctx, lang, voice.speed, rng.choice((2.0, 5.0, 10.0, 15.0, 35.0)))
        text = join_parts(parts, lang)
        return synth_job(text, voice), text, voice, None

    src = pick_source(ctx, kind, lang, MIN_SOURCE_S if kind in NEEDS_LONG_SOURCE else 0.0)
    lang, voice, dur = src.meta["lang"], src.meta["_voice"], ctx.durations[src.id]
    text_src, parts_src = src.meta["text"], src.meta["_parts"]

    if kind in ("prefix_30", "prefix_50", "suffix_50"):
        start, end = {"prefix_30": (0.0, 0.3), "prefix_50": (0.0, 0.5),
                      "suffix_50": (0.5, 1.0)}[kind]
        return trim_job(src, dur, start, end), slice_text(text_src, lang, start, end), voice, src.id
    if kind == "original_plus_more":
        extra = rng.choice(ctx.pools[lang].held_sentences)
        job = {"op": "synth_append", "src": src.rel, "text": extra, "voice": voice.name,
               "speed": voice.speed, "pitch": voice.pitch}
        return job, join_parts([text_src, extra], lang), voice, src.id
    if kind == "same_voice_different_sentence":
        text = join_parts(new_text_like(ctx, lang, voice.speed, dur), lang)
        return synth_job(text, voice), text, voice, src.id
    if kind == "different_voice_same_sentence":
        for _ in range(50):
            new_voice = other_voice(rng, voice)
            if (text_src, new_voice.name, new_voice.speed, new_voice.pitch) not in ctx.taken:
                break
        return synth_job(text_src, new_voice), text_src, new_voice, src.id
    if kind == "same_voice_same_first_half":
        text = first_half_new_ending(ctx, lang, voice.speed, parts_src)
        return synth_job(text, voice), text, voice, src.id
    raise ValueError(f"unknown negative kind {kind!r}")


def first_half_new_ending(ctx: NegativeContext, lang: str, speed: int, parts: list[str]) -> str:
    """Keep the first half of an original's text and replace the rest with unseen text."""
    if len(parts) >= 2:
        keep = min((len(parts) + 1) // 2, len(parts) - 1)
        rest_s = estimate_seconds(parts[keep:], lang, speed)
        tail = compose_parts(ctx.rng, ctx.pools[lang].held_sentences, lang, speed,
                             rest_s * 0.9, rest_s * 1.3 + 2)
        return join_parts(parts[:keep] + tail, lang)
    units = text_units(parts[0], lang)
    other = text_units(ctx.rng.choice(ctx.pools[lang].held_sentences), lang)
    half = max(1, len(units) // 2)
    return units_to_text(units[:half] + other[len(other) // 2:], lang)


def plan_negatives(n: int, seed: int, originals: list[Item], durations: dict[str, float],
                   pools: dict[str, TextPools]) -> list[Item]:
    """Decide every negative; kinds are interleaved so each gets ~n/8, ~1/6 Mandarin."""
    by_lang: dict[str, list[Item]] = {}
    for o in originals:
        by_lang.setdefault(o.meta["lang"], []).append(o)
    taken = {(o.meta["text"], o.meta["voice"], o.meta["speed"], o.meta["pitch"]) for o in originals}
    ctx = NegativeContext(random.Random(f"{seed}:negatives"), pools, by_lang, durations, taken)
    items = []
    for i in range(n):
        kind = NEGATIVE_KINDS[i % len(NEGATIVE_KINDS)]
        lang = "cmn" if (i // len(NEGATIVE_KINDS)) % CMN_EVERY == CMN_EVERY - 1 else "en"
        job, text, voice, source_id = build_negative(ctx, kind, lang)
        nid = f"n{i:04d}"
        rel = f"negatives/{nid}.wav"
        deps = (job["src"],) if "src" in job else ()
        meta = {"id": nid, "path": rel, "kind": kind, "source_id": source_id,
                "text": text, "voice": voice.name}
        items.append(Item(nid, rel, job, deps, meta))
    return items


# --------------------------------------------------------------------------
# Execution (worker processes; no randomness except the seeded noise)
# --------------------------------------------------------------------------


def part_path(path: Path, tag: str = "part") -> Path:
    """Temporary sibling path that keeps the extension (tools pick formats by it)."""
    return path.with_name(f"{path.stem}.{tag}{path.suffix}")


def run(cmd: list[str], stdin: bytes | None = None) -> None:
    """Run a command (argument list, no shell); raise with its stderr on failure."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {err}")


def espeak(text: str, voice: str, speed: int, pitch: int, dst: Path) -> None:
    """Synthesise UTF-8 `text` (fed on stdin, so no quoting issues) to a WAV."""
    run([ESPEAK, "-b", "1", "-v", voice, "-s", str(speed), "-p", str(pitch),
         "-w", str(dst), "--stdin"], stdin=text.encode("utf-8"))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV -> (int16 array of shape (frames, channels), sample rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels()), w.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write int16 samples of shape (frames, channels) as a WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def active_rms(x: np.ndarray, rate: int) -> float:
    """RMS over frames that contain speech (within NOISE_ACTIVE_DB of the loudest)."""
    flen = max(1, int(rate * NOISE_FRAME_S))
    n = len(x) // flen
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0
    frames = x[: n * flen].reshape(n, flen)
    energy = np.mean(frames ** 2, axis=1)
    active = energy >= energy.max() * 10 ** (NOISE_ACTIVE_DB / 10)
    return float(np.sqrt(np.mean(energy[active])))


def add_noise(src: Path, dst: Path, snr_db: float, seed_key: str) -> dict:
    """White Gaussian noise at `snr_db` below the speech RMS; seeded per file."""
    pcm, rate = read_wav(src)
    x = pcm.astype(np.float64)
    rms = active_rms(x.mean(axis=1), rate)
    seed = [zlib.crc32(seed_key.encode()), int(snr_db * 100)]
    noise = np.random.default_rng(seed).standard_normal(x.shape) * rms / 10 ** (snr_db / 20)
    y = np.rint(x + noise)
    clipped = int(np.count_nonzero((y > 32767) | (y < -32768)))
    write_wav(dst, np.clip(y, -32768, 32767), rate)
    return {"clipped_samples": clipped}


def trim_silence_end(src: Path, dst: Path, dbfs: float) -> dict:
    """Cut after the last sample (in any channel) above `dbfs`; keep all of a quieter file."""
    pcm, rate = read_wav(src)
    loud = np.flatnonzero((np.abs(pcm.astype(np.int32)) > 32768 * 10 ** (dbfs / 20)).any(axis=1))
    stop = int(loud[-1]) + 1 if loud.size else len(pcm)
    write_wav(dst, pcm[:stop], rate)
    return {"trimmed_s": (len(pcm) - stop) / rate}


def ffmpeg_decoded(src: Path, dst: Path, fmt: str, encode_args: list[str]) -> None:
    """Encode `src` to the raw format `fmt`, then decode that back to a 16-bit WAV at `dst`."""
    coded = dst.with_name(f"{dst.stem}.coded.{fmt}")
    try:
        run([FFMPEG, *FFMPEG_COMMON, "-i", str(src), *encode_args, *FFMPEG_BITEXACT,
             "-f", fmt, str(coded)])
        run([FFMPEG, *FFMPEG_COMMON, "-f", fmt, "-i", str(coded), "-c:a", "pcm_s16le",
             *FFMPEG_BITEXACT, str(dst)])
    finally:
        coded.unlink(missing_ok=True)


def run_job(job: dict, out_dir: str, rel: str) -> dict:
    """Execute one recipe, writing atomically to out_dir/rel; never raises."""
    out = Path(out_dir)
    dst = out / rel
    tmp = part_path(dst)
    info: dict = {}
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        op = job["op"]
        src = out / job["src"] if "src" in job else None
        if op == "synth":
            espeak(job["text"], job["voice"], job["speed"], job["pitch"], tmp)
        elif op == "synth_append":
            extra = part_path(dst, "extra")
            try:
                espeak(job["text"], job["voice"], job["speed"], job["pitch"], extra)
                run([SOX, *SOX_COMMON, str(src), str(extra), str(tmp)])
            finally:
                extra.unlink(missing_ok=True)
        elif op == "ffmpeg":
            run([FFMPEG, *FFMPEG_COMMON, "-i", str(src), *job["args"], *FFMPEG_BITEXACT, str(tmp)])
        elif op == "sox":
            run([SOX, *SOX_COMMON, str(src), "-b", "16", str(tmp), *job["args"]])
        elif op == "noise":
            info = add_noise(src, tmp, job["snr_db"], job["seed_key"])
        elif op == "trim_silence":
            info = trim_silence_end(src, tmp, job["args"][0])
        elif op == "ffmpeg_decoded":
            ffmpeg_decoded(src, tmp, job["args"][0], job["args"][1])
        else:
            raise ValueError(f"unknown op {op!r}")
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise RuntimeError("tool produced no output")
        os.replace(tmp, dst)
        return {"rel": rel, "ok": True, "info": info}
    except Exception as exc:  # report, don't kill the pool
        tmp.unlink(missing_ok=True)
        return {"rel": rel, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------
# Idempotency: recipe hashes
# --------------------------------------------------------------------------


def recipe_hashes(items: list[Item], known: dict[str, str]) -> dict[str, str]:
    """Hash each item's recipe together with the hashes of the files it derives from."""
    hashes = dict(known)
    for it in items:
        payload = {"v": RECIPE_VERSION, "job": it.job, "deps": [hashes[d] for d in it.deps]}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        hashes[it.rel] = hashlib.sha256(blob).hexdigest()[:20]
    return hashes


def load_specs(out: Path) -> dict[str, str]:
    """Recipe hashes of files built by previous runs ({} if none)."""
    try:
        return json.loads((out / SPECS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (tmp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def remove_stale_parts(out: Path) -> None:
    """Delete temporaries left behind by an interrupted run."""
    for sub in ("originals", *TRANSFORM_DIRS, "negatives"):
        for pattern in TEMP_PATTERNS:
            for p in (out / sub).rglob(pattern):
                p.unlink(missing_ok=True)


def retire_transforms(out: Path, built: dict[str, str], hashes: dict[str, str]) -> None:
    """Move or delete the files of transforms that were renamed, moved or removed.

    A built file is retired when it lies under ``<family>/<name>/`` (a
    TRANSFORM_DIRS family) and <name> is no longer a transform of that family.
    A planned file that is missing is moved from a retired file with the same
    recipe hash and extension (a rename: same recipe, new name) instead of
    being rebuilt; the other retired files are deleted, then their emptied
    directories.
    """
    def retired(rel: str) -> bool:
        parts = rel.split("/")
        return (len(parts) == 3 and parts[0] in TRANSFORM_DIRS
                and parts[1] not in TRANSFORM_DIRS[parts[0]])

    old = [rel for rel in built if retired(rel)]
    if not old:
        return
    by_recipe = {(built[rel], Path(rel).suffix): rel for rel in old if (out / rel).exists()}
    moved = 0
    for rel, h in hashes.items():
        if built.get(rel) == h and (out / rel).exists():
            continue
        src = by_recipe.pop((h, Path(rel).suffix), None)
        if src is not None:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(out / src, out / rel)
            built[rel] = h
            moved += 1
    for rel in old:
        (out / rel).unlink(missing_ok=True)
        built.pop(rel, None)
    for d in sorted({(out / rel).parent for rel in old}):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    print(f"[retire] {len(old)} files of retired transforms: {moved} moved to a renamed "
          f"transform (same recipe), {len(old) - moved} deleted", flush=True)


# --------------------------------------------------------------------------
# Phases, verification, reporting
# --------------------------------------------------------------------------


def run_phase(name: str, items: list[Item], out: Path, jobs: int, hashes: dict[str, str],
              built: dict[str, str]) -> tuple[set[str], list[dict]]:
    """Build the items whose file is missing or whose recipe changed; return (failed, results)."""
    todo = [it for it in items
            if not ((out / it.rel).exists() and built.get(it.rel) == hashes[it.rel])]
    print(f"[{name}] {len(items)} files: {len(items) - len(todo)} up to date, "
          f"{len(todo)} to build", flush=True)
    failed: set[str] = set()
    results: list[dict] = []
    if not todo:
        return failed, results
    t0 = time.monotonic()
    step = max(1, len(todo) // 20)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futs = [pool.submit(run_job, it.job, str(out), it.rel) for it in todo]
        for k, fut in enumerate(as_completed(futs), 1):
            res = fut.result()
            results.append(res)
            if res["ok"]:
                built[res["rel"]] = hashes[res["rel"]]
            else:
                failed.add(res["rel"])
                built.pop(res["rel"], None)
                print(f"[{name}] FAILED {res['rel']}: {res['error']}", flush=True)
            if k % step == 0 or k == len(todo):
                el = time.monotonic() - t0
                print(f"[{name}] {k}/{len(todo)} built, {len(failed)} failed, {el:.0f}s", flush=True)
    return failed, results


def wav_duration(path: Path) -> float:
    """Duration of a WAV from its header."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def decode_check(path: str) -> tuple[str, str | None, float]:
    """Fully decode one file with PyAV; return (path, error or None, seconds decoded)."""
    try:
        import av  # local import: only needed for --verify

        with av.open(path) as c:
            stream = c.streams.audio[0]
            samples, rate = 0, stream.rate or 1
            for frame in c.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate
        if samples == 0:
            return path, "no samples decoded", 0.0
        return path, None, samples / rate
    except Exception as exc:
        return path, f"{type(exc).__name__}: {exc}", 0.0


def verify(out: Path, rels: list[str], jobs: int) -> list[tuple[str, str]]:
    """Decode every listed file with PyAV in parallel; return the failures."""
    t0 = time.monotonic()
    bad = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for path, err, _ in pool.map(decode_check, [str(out / r) for r in rels], chunksize=16):
            if err:
                bad.append((path, err))
    print(f"[verify] decoded {len(rels) - len(bad)}/{len(rels)} files with PyAV "
          f"in {time.monotonic() - t0:.0f}s", flush=True)
    for path, err in bad:
        print(f"[verify] FAILED {path}: {err}", flush=True)
    return bad


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_negatives_distinct(out: Path, manifest: dict) -> list[tuple[str, str]]:
    """Negatives whose audio is byte-identical to an original (must be none)."""
    origs = {file_digest(out / o["path"]): o["id"] for o in manifest["originals"]}
    dupes = [(n["id"], origs[d]) for n in manifest["negatives"]
             if (d := file_digest(out / n["path"])) in origs]
    print(f"[verify] {len(dupes)} negatives byte-identical to an original", flush=True)
    for nid, oid in dupes:
        print(f"[verify] FAILED {nid} is identical to {oid}", flush=True)
    return dupes


def peak_dbfs(path: Path) -> float:
    """Peak level of a 16-bit WAV in dBFS."""
    pcm, _ = read_wav(path)
    peak = int(np.abs(pcm.astype(np.int32)).max()) if pcm.size else 0
    return 20 * math.log10(max(peak, 1) / 32768)


def print_summary(out: Path, manifest: dict, results: list[dict], n_failed: int,
                  seconds: float) -> None:
    """Counts, duration spread, level notes, size and wall time."""
    origs = manifest["originals"]
    durs = np.array([o["duration_s"] for o in origs]) if origs else np.zeros(0)
    n_cmn = sum(o["lang"] == "cmn" for o in origs)
    print(f"originals: {len(origs)} ({n_cmn} Mandarin), transforms: {len(manifest['transforms'])}, "
          f"cut copies: {len(manifest['cut_copies'])}, negatives: {len(manifest['negatives'])}, "
          f"failed: {n_failed}")
    if durs.size:
        bins = [(0, 1), (1, 3), (3, 20), (20, 30), (30, 60), (60, 1e9)]
        spread = ", ".join(f"{a}-{b if b < 1e9 else 'inf'}s: {int(((durs >= a) & (durs < b)).sum())}"
                           for a, b in bins)
        print(f"original durations: min {durs.min():.2f}s, median {np.median(durs):.2f}s, "
              f"max {durs.max():.2f}s; {spread}")
        hot = sum(peak_dbfs(out / o["path"]) > -6.0 for o in origs)
        print(f"gain_plus6: {hot}/{len(origs)} originals peak above -6 dBFS, so the sox "
              f"limiter (gain -l) engaged on them instead of clipping")
    kinds: dict[str, int] = {}
    for n in manifest["negatives"]:
        kinds[n["kind"]] = kinds.get(n["kind"], 0) + 1
    print("negatives by kind: " + ", ".join(f"{k}={v}" for k, v in kinds.items()))
    clipped = sum(r.get("info", {}).get("clipped_samples", 0) for r in results if r["ok"])
    print(f"noise_30db: {clipped} samples clipped to int16 range (files built this run)")
    trimmed = [r["info"]["trimmed_s"] for r in results if r["ok"] and "trimmed_s" in r["info"]]
    if trimmed:
        print(f"trim_silence_end: {min(trimmed):.3f}-{max(trimmed):.3f} s removed, median "
              f"{np.median(trimmed):.3f} s ({len(trimmed)} files built this run)")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size: {size / 1e6:.1f} MB under {out}; wall time {seconds:.0f}s")


def manifest_entry(meta: dict) -> dict:
    """Strip private planning fields (prefixed with _) from a manifest entry."""
    return {k: v for k, v in meta.items() if not k.startswith("_")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--originals", type=int, default=200, help="number of originals (200)")
    ap.add_argument("--negatives", type=int, default=200, help="number of negatives (200)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="master random seed")
    ap.add_argument("--verify", action="store_true", help="decode every file with PyAV at the end")
    args = ap.parse_args(argv)
    if args.originals < 1 or args.negatives < 0 or args.jobs < 1:
        ap.error("--originals and --jobs must be >= 1, --negatives >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Plan, build originals, then transforms and negatives, then write the manifest."""
    args = parse_args(argv)
    t0 = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(out)
    pools = make_pools()
    built = load_specs(out)

    try:
        originals = plan_originals(args.originals, args.seed, pools)
        hashes = recipe_hashes(originals, {})
        failed, results = run_phase("originals", originals, out, args.jobs, hashes, built)
        write_json(out / SPECS_FILE, built)
        originals = [o for o in originals if o.rel not in failed]
        durations = {o.id: wav_duration(out / o.rel) for o in originals}
        for o in originals:
            o.meta["duration_s"] = round(durations[o.id], 3)

        transforms = plan_transforms(originals)
        cut_copies = plan_transforms(originals, "cut_copies")
        negatives = plan_negatives(args.negatives, args.seed, originals, durations, pools)
        derived = transforms + cut_copies + negatives
        hashes = recipe_hashes(derived, hashes)
        retire_transforms(out, built, hashes)
        write_json(out / SPECS_FILE, built)
        failed2, results2 = run_phase("transforms+negatives", derived, out, args.jobs, hashes,
                                      built)
        failed |= failed2
        results += results2
    finally:
        write_json(out / SPECS_FILE, built)

    manifest = {
        "originals": [manifest_entry(o.meta) for o in originals],
        "transforms": [t.meta for t in transforms if t.rel not in failed],
        # Copies that lost speech (NEGATIVE_TRANSFORMS): must be refused.
        "cut_copies": [c.meta for c in cut_copies if c.rel not in failed],
        "negatives": [n.meta for n in negatives if n.rel not in failed],
    }
    write_json(out / MANIFEST_FILE, manifest)

    bad = []
    if args.verify:
        rels = [e["path"] for part in manifest.values() for e in part]
        bad = verify(out, rels, args.jobs) + check_negatives_distinct(out, manifest)
    print_summary(out, manifest, results, len(failed), time.monotonic() - t0)
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
