"""CLIP text encoder: prompts -> its outputs by name (last hidden states (batch, 77, width), pooled
output, and whatever else the export has); the family picks what its UNet takes."""

from typing import Callable

import numpy as np

from edgesd.sessions import Session
from edgesd.tokenizer import ClipTokenizer


class TextEncoder:
    def __init__(self, tokenizer: ClipTokenizer, session: Callable[[], Session]):
        self.tokenizer = tokenizer
        self._session = session  # the compiled submodel (opened on demand in low-memory mode)

    def __call__(self, prompts: list[str]) -> dict[str, np.ndarray]:
        session = self._session()
        ids = self.tokenizer(prompts).astype(session.input_types["input_ids"])
        return session.run({"input_ids": ids})
