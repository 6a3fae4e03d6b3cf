"""Qwen2's slow tokenizer as upstream ArtiMuse ran it (`AutoTokenizer.from_pretrained(..., use_fast=False)` on
transformers 4.x): byte-level BPE in plain Python from a checkpoint's vocab.json and merges.txt, so `aesq models
check` can compare it with the tokenizer.json aesq loads. transformers 5 has no slow Qwen2 tokenizer any more.

The algorithm (facts of transformers 4.x `tokenization_qwen2.py` and `PreTrainedTokenizer.tokenize`): NFC-normalise
the text; split out the added tokens (longest first); cut the rest with Qwen2's pre-tokenization pattern; map each
piece's UTF-8 bytes to GPT-2's printable characters; merge pairs by rank until none applies; look the pieces up.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from functools import cache
from pathlib import Path

import regex

# Qwen2's pre-tokenization pattern: contractions, letters with one leading non-letter, single digits, punctuation
# runs, line breaks, spaces.
PRETOKENIZE = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


# The id `encode` gives a piece the vocabulary does not have.
NO_ID = -1


@cache
def _byte_characters() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {
        **{byte: chr(byte) for byte in printable},
        **{byte: chr(256 + index) for index, byte in enumerate(others)},
    }


class SlowQwen2Tokenizer:
    """The slow tokenizer of one checkpoint, with the few methods `aesq models check` asks a tokenizer for."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added: dict[str, int]) -> None:
        self.vocab = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.added = added
        self._added_pattern = (
            regex.compile("|".join(regex.escape(token) for token in sorted(added, key=len, reverse=True)))
            if added
            else None
        )
        self._tokens = {index: token for token, index in {**vocab, **added}.items()}
        self.unk_token_id = None  # Qwen2 has no unknown token: every byte is in the vocabulary

    @classmethod
    def from_folder(cls, folder: Path) -> SlowQwen2Tokenizer | None:
        """Read vocab.json, merges.txt and the added tokens (tokenizer_config.json, added_tokens.json); None when
        the checkpoint ships no vocab.json and merges.txt. ValueError when they cannot be read."""
        if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
            return None
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            added: dict[str, int] = {}
            config = folder / "tokenizer_config.json"
            if config.is_file():
                decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
                added |= {entry["content"]: int(index) for index, entry in decoder.items()}
            if (folder / "added_tokens.json").is_file():
                added |= json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"cannot read the vocabulary files of {folder}: {error}") from error
        merges = [
            (first, second)
            for number, line in enumerate(lines)
            if line.strip() and not (number == 0 and line.startswith("#version"))
            for first, second in [line.split()]
        ]
        return cls(vocab, merges, added)

    def __call__(self, text: str) -> dict[str, list[int]]:
        """The ids of `text` under the key transformers' tokenizers use (Qwen2 adds no special tokens)."""
        return {"input_ids": self.encode(text)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The ids of `text` (Qwen2 adds no special tokens either way); NO_ID for a merged piece the vocabulary
        lacks (merges.txt and vocab.json disagree)."""
        return [
            NO_ID if (index := self.convert_tokens_to_ids(token)) is None else index for token in self.tokenize(text)
        ]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of `text`: added tokens whole, the text between them by byte-level BPE."""
        text = unicodedata.normalize("NFC", text)
        tokens: list[str] = []
        start = 0
        for match in self._added_pattern.finditer(text) if self._added_pattern else ():
            tokens += self._bpe_pieces(text[start : match.start()])
            tokens.append(match.group())
            start = match.end()
        return tokens + self._bpe_pieces(text[start:])

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The id of one token, None when the vocabulary does not have it."""
        return self.added.get(token, self.vocab.get(token))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """The tokens of these ids."""
        return [self._tokens.get(index, f"<id {index}>") for index in ids]

    def _bpe_pieces(self, text: str) -> list[str]:
        """Byte-level BPE of a text without added tokens."""
        characters = _byte_characters()
        pieces: list[str] = []
        for word in PRETOKENIZE.findall(text):
            pieces += self._merged("".join(characters[byte] for byte in word.encode("utf-8")))
        return pieces

    def _merged(self, word: str) -> list[str]:
        """One pre-tokenized word merged pair by pair, the lowest-ranked pair first, every occurrence at once."""
        parts = list(word)
        while len(parts) > 1:
            pairs = set(itertools.pairwise(parts))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            merged: list[str] = []
            index = 0
            while index < len(parts):
                if index < len(parts) - 1 and (parts[index], parts[index + 1]) == best:
                    merged.append(parts[index] + parts[index + 1])
                    index += 2
                else:
                    merged.append(parts[index])
                    index += 1
            parts = merged
        return parts
