"""One request's audio as the pipeline sees it: the upload's bytes and digest, and what the
pipeline learns of them as it walks the tiers (service/pipeline/recognition.py).

The upload (service/pipeline/upload.py) only carries what arrived; the audio's length, worked
out for the decode budget, and its PCM, kept when short, are the pipeline's and live here.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from earmark.fingerprint.clipping import NO_BLOCKS
from earmark.service.pipeline.upload import Upload
from earmark.service.pipeline.verification import QueryFeatures


class QueryAudio:
    """The upload (its bytes and the digest taken as they arrived) and what decoding has learned
    of it so far."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.digest = upload.digest
        self.size = upload.size
        self.audio_seconds: float | None = None  # the decode budget's estimate, once worked out
        self.pcm: np.ndarray | None = None  # the decoded audio, when short enough to keep (recognition.KEEP_PCM_S)
        # Where its source clipped (`DecodedAudio.clipped_blocks`), known once the first pass has decoded it.
        self.clipped: np.ndarray = NO_BLOCKS
        # The fuzzy tier's features, once computed: shared by the lookup and a miss's entry.
        self.features: QueryFeatures | None = None

    def open(self) -> BinaryIO:
        """The upload's bytes as a file, from the start (one reader at a time)."""
        return self.upload.open()
