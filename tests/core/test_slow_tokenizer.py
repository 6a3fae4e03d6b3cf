"""Upstream's slow Qwen2 tokenizer, re-implemented, against the `tokenizers` library set up as Qwen2's
tokenizer.json sets it up (NFC, the pre-tokenization pattern split, byte-level), on a vocabulary trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from aesq.core.slow_tokenizer import NO_ID, PRETOKENIZE, SlowQwen2Tokenizer
from aesq.models import internvl

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
TEXTS = [
    internvl.build_prompt(internvl.ARTIMUSE_QUESTION, internvl.DEFAULT_SYSTEM_MESSAGE, 4),
    internvl.critique_prompt("Composition & Design", "Be brief.", 2),
    "It's 2024:  they'll see\n\n\nyes  \r\n!!",
    "café café",  # the first written decomposed: NFC makes the two alike
    "ｃａｆｅ ① Ⅳ 你好",
]


def _fast_qwen2_tokenizer() -> Tokenizer:
    """A BPE trained on aesq's prompts, set up as Qwen2's tokenizer.json is."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [internvl.ARTIMUSE_QUESTION, internvl.DEFAULT_SYSTEM_MESSAGE, TEXTS[2] * 3, TEXTS[3]]
    corpus += [internvl.CRITIQUE_QUESTION.format(aspect=aspect) for aspect in internvl.ARTIMUSE_ASPECTS]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """The fast tokenizer, and a folder with the vocabulary files a Qwen2 checkpoint ships beside it."""
    tokenizer = _fast_qwen2_tokenizer()
    folder = tmp_path_factory.mktemp("qwen2-tokenizer")
    tokenizer.model.save(str(folder))  # vocab.json, merges.txt
    added = {str(tokenizer.token_to_id(token)): {"content": token, "special": True} for token in SPECIAL}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}), encoding="utf-8")
    return tokenizer, folder


@pytest.mark.parametrize("text", TEXTS, ids=["scoring-prompt", "critique-prompt", "spacing", "nfc", "wide-and-cjk"])
def test_the_slow_tokenizer_gives_the_fast_ones_ids(published, text):
    fast, folder = published
    slow = SlowQwen2Tokenizer.from_folder(folder)
    assert slow is not None
    assert slow.encode(text) == fast.encode(text).ids
    assert slow(text)["input_ids"] == fast.encode(text).ids
    assert len(fast.encode(text).ids) < len(text.encode())  # the merges were used


def test_added_tokens_are_whole_and_ids_map_back(published):
    fast, folder = published
    slow = SlowQwen2Tokenizer.from_folder(folder)
    assert slow is not None
    ids = slow.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>x")
    assert ids[:4] == [fast.token_to_id(token) for token in ("<img>", "<IMG_CONTEXT>", "<IMG_CONTEXT>", "</img>")]
    assert slow.convert_ids_to_tokens(ids[:2]) == ["<img>", "<IMG_CONTEXT>"]
    assert [slow.convert_tokens_to_ids(token) for token in SPECIAL] == [fast.token_to_id(token) for token in SPECIAL]


def test_a_merge_missing_from_merges_txt_changes_the_ids(published, tmp_path):
    fast, folder = published
    for name in ("vocab.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "merges.txt").write_text("\n".join(lines[:1] + lines[2:]) + "\n", encoding="utf-8")  # the first merge
    slow = SlowQwen2Tokenizer.from_folder(tmp_path)
    assert slow is not None
    assert slow.encode(TEXTS[0]) != fast.encode(TEXTS[0]).ids


def test_a_merged_piece_missing_from_vocab_json_has_no_id(published, tmp_path):
    fast, folder = published
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merged = next(token for token in fast.encode(TEXTS[0]).tokens if len(token) > 1 and token not in SPECIAL)
    del vocab[merged]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_bytes((folder / "merges.txt").read_bytes())
    slow = SlowQwen2Tokenizer.from_folder(tmp_path)
    assert slow is not None and NO_ID in slow.encode(TEXTS[0])


def test_no_vocabulary_files_is_none_and_unreadable_ones_are_refused(tmp_path):
    assert SlowQwen2Tokenizer.from_folder(tmp_path) is None
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^cannot read the vocabulary files of "):
        SlowQwen2Tokenizer.from_folder(tmp_path)
