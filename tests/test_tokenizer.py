"""The runtime's tokenizer (`tokenizers` only) against transformers' CLIPTokenizer, the class
diffusers' SD pipelines use, on prompts where tokenizers tend to disagree."""

import logging
import shutil

import pytest

from edgesd.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "",
    "a photo of a cat",
    "A.B.C!? #hashtag @user $5 100% (masterpiece:1.2), [best] {quality}",
    "Ünïcödé naïve café — ½ ﬁ Ⅻ 🐱🚀!!",
    "東京タワー 한국어 привет مرحبا",
    "ctrl\x00chars\x07 and \u200b zero\ufeffwidth",
    "tabs\tand\nnewlines   and  spaces ",
    "don't you'll it's we've I'm they'd",
    "<|endoftext|> inside <|startoftext|> text",
    "123 4567 3.14 1e-5",
    "word " * 100,  # > 77 tokens: truncated with EOS kept last
]


@pytest.fixture(scope="module", params=["!", "<|endoftext|>"], ids=["sd2-pad", "sd1-pad"])
def folders(request, tmp_path_factory):
    from edgesd.export.tokenizer import write_clip_tokenizer

    bpe_only = tmp_path_factory.mktemp("tok") / "tokenizer"
    write_clip_tokenizer(bpe_only, pad_token=request.param)
    with_json = bpe_only.parent / "with_json"
    shutil.copytree(bpe_only, with_json)
    ClipTokenizer(bpe_only).save(with_json / "tokenizer.json")
    return bpe_only, with_json


def test_vocabulary_is_clips(folders):
    reference = transformers.CLIPTokenizer.from_pretrained(folders[0])
    assert len(reference) == 49408
    assert reference.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
@pytest.mark.parametrize("source", ["vocab+merges", "tokenizer.json"])
def test_ids_match_transformers(folders, prompt, source):
    folder = folders[0] if source == "vocab+merges" else folders[1]
    reference = transformers.CLIPTokenizer.from_pretrained(folders[0])
    expected = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    assert ClipTokenizer(folder)([prompt])[0].tolist() == expected


def test_long_prompt_is_truncated_with_a_warning(folders, caplog):
    with caplog.at_level(logging.WARNING, logger="edgesd"):
        ids = ClipTokenizer(folders[0])(["red " * 90 + "blue"])
    assert ids.shape == (1, 77) and ids[0, -1] == 49407
    assert "dropped" in caplog.text and "blue" in caplog.text


def test_pad_token_comes_from_the_folder(folders):
    pad_id = transformers.CLIPTokenizer.from_pretrained(folders[0]).pad_token_id  # "!" is 0 (SD2), EOS 49407 (SD1)
    ids = ClipTokenizer(folders[0])(["cat"])[0]
    assert ids[3:].tolist() == [pad_id] * 74
