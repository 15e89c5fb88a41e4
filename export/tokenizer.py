"""A real CLIP BPE tokenizer for test models, written the way released SD repos ship it.

The vocabulary comes from open_clip's `bpe_simple_vocab_16e6.txt.gz` (open-clip-torch installed
with --no-deps: only this file is needed), turned into vocab.json + merges.txt exactly as
OpenAI's CLIP and transformers' CLIPTokenizer build it (49408 tokens).
"""

import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode

VOCAB_SIZE = 49408


def _bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locate without importing (it needs torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip's BPE file is needed: pip install --no-deps open-clip-torch")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer(folder: Path, pad_token: str, model_max_length: int = 77) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and the tokenizer configs into `folder`; return the tokenizer."""
    lines = gzip.open(_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 1 + VOCAB_SIZE - 2 * 256 - 2]  # bytes, bytes + </w>, merges, BOS/EOS
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        folder / "vocab.json", folder / "merges.txt", pad_token=pad_token, model_max_length=model_max_length
    )
    tokenizer.save_pretrained(folder)
    return tokenizer
