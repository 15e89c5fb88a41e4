"""CLIP tokenization with `tokenizers`: tokenizer.json when present, else vocab.json + merges.txt.

Folders written by optimum or saved by diffusers' slow CLIPTokenizer hold only vocab.json and
merges.txt, so the fast CLIP tokenizer is assembled here from the same parts transformers'
CLIPConverter uses. Prompts are padded/truncated to `model_max_length` (77) with BOS/EOS, as
diffusers does; a truncated prompt is reported with a warning naming the dropped text.
"""

import json
import logging
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from edgesd.errors import ModelFolderError

log = logging.getLogger("edgesd")
# transformers' slow CLIPTokenizer (what diffusers uses) puts spaces around CJK ideographs
# (BasicTokenizer._tokenize_chinese_chars): each one is its own word.
_CJK = r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_tokenizer_from_bpe_files(folder: Path, bos: str, eos: str, pad: str, unk: str) -> Tokenizer:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Replace(Regex(r"[\p{Cc}\p{Cf}\x{FFFD}]"), ""),  # as BasicTokenizer._clean_text
            normalizers.Lowercase(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CJK), behavior="isolated"),
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Positional: tokenizers 0.23 no longer takes these as keywords.
    tokenizer.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]), trim_offsets=False,
                                                            add_prefix_space=False)
    # Special tokens are matched in the text itself, as transformers does (SD2 pads with "!", so a
    # "!" in a prompt is the pad token there too).
    tokenizer.add_special_tokens(list(dict.fromkeys([bos, eos, pad, unk])))
    return tokenizer


def _token(value) -> str:
    return value["content"] if isinstance(value, dict) else value


class ClipTokenizer:
    def __init__(self, folder: Path):
        try:
            self._load(folder)
        except ModelFolderError:
            raise
        except Exception as e:  # tokenizers raises plain Exceptions for a damaged file; json, ValueError/TypeError
            raise ModelFolderError(f"{folder}: damaged tokenizer files ({str(e).splitlines()[0][:200]}); re-download or "
                                   "re-export the model") from None

    def _load(self, folder: Path) -> None:
        config = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / name).exists():
                config.update(json.loads((folder / name).read_text(encoding="utf-8")))
        bos = _token(config.get("bos_token", "<|startoftext|>"))
        eos = _token(config.get("eos_token", "<|endoftext|>"))
        pad = _token(config.get("pad_token", eos))
        self.max_length = min(int(config.get("model_max_length", 77)), 77)
        if self.max_length < 2:  # room for the start and end tokens at least
            raise ModelFolderError(f"{folder}: model_max_length {self.max_length} leaves no room for a prompt; re-export the model")
        if (folder / "tokenizer.json").exists():
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            self._tokenizer = clip_tokenizer_from_bpe_files(folder, bos, eos, pad, _token(config.get("unk_token", eos)))
        else:
            raise ModelFolderError(f"{folder} has no tokenizer.json nor vocab.json + merges.txt; re-export the model")
        pad_id = self._tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ModelFolderError(f"{folder}: pad token {pad!r} is not in the vocabulary")
        self._tokenizer.no_truncation()
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad, length=self.max_length)

    def save(self, file: Path) -> None:
        """Write tokenizer.json (padding to 77 included) for `tokenizers` users."""
        self._tokenizer.save(str(file))

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids (len(prompts), 77) int64; prompts over 77 tokens are truncated with a warning."""
        rows = []
        for prompt in prompts:
            ids = self._tokenizer.encode(prompt).ids
            if len(ids) > self.max_length:
                dropped = self._tokenizer.decode(ids[self.max_length - 1 : -1]).replace("</w>", " ")
                log.warning(
                    "The prompt is longer than CLIP's %d tokens; this part was dropped: %s", self.max_length, dropped
                )
                ids = ids[: self.max_length - 1] + ids[-1:]
            rows.append(ids)
        return np.array(rows, dtype=np.int64)
