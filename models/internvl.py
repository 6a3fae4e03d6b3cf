"""Token-as-score aesthetic scorers on InternVL-chat checkpoints: ERNIE-Image-Aes, ArtiMuse, UniPercept.

All three are InternVL-3-style chat models (InternViT vision tower, pixel-shuffle + MLP projector,
Qwen2 language model) fine-tuned to answer a rating question with one of 101 two-letter tokens
("aa".."az" = 0..25, "ca".."cy" = 26..50, "da".."dy" = 51..75, "ea".."ey" = 76..100). The score is
the expectation of 0..100 under the softmax over those 101 tokens' logits at the position that
would produce the answer: one forward pass, no generation.

The published checkpoints ship their own model code (`InternVLChatModel`); it is never executed
here. Instead the chat `config.json` is translated into transformers' native `InternVLConfig`, an
`InternVLModel` (vision tower + projector + language model, no LM head) is built from it, and the
published weight names are mapped onto the native ones (`CHAT_TO_NATIVE` below). The score applies
only the 101 rows of the LM head it needs, to the last position only; the full head is used once
per image at that position for a diagnostic (the probability mass on the 101 tokens).

The three UniPercept variants read the same checkpoint: a process loads it once per (folder,
device, dtype) and the variants share it, differing only in their prompt.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from PIL import Image

from aesq.models.base import Critic, Score, Scorer

if TYPE_CHECKING:  # transformers is imported when a checkpoint is loaded, not with aesq.models
    from transformers import InternVLForConditionalGeneration, InternVLModel, PreTrainedTokenizerBase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
SUPPORTED_TEMPLATE = "internvl2_5"
# The `internvl2_5` conversation template's default system message (InternVL `conversation.py`),
# used when the checkpoint's config.json carries no `system_message`.
DEFAULT_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)

# ArtiMuse's scoring question (`InternVLChatModel.score` in thunderbolt215/ArtiMuse), verbatim:
# leading newline, 8-space indents and trailing spaces included. ERNIE-Image-Aes is scored with it too.
ARTIMUSE_QUESTION = (
    "\n"
    "        Rate the aesthetics score of the image in 0-100. \n"
    "        In the output format, numbers are replaced by 2 corresponding letters, \n"
    "        and the mapping relationship is: \n"
    "        score 0 to 25: 0-aa, 1-ab, 2-ac, 3-ad, ... , 25-az,\n"
    "        score 26 to 50: 26-ca, 27-cb, 28-cc, 29-cd, ..., 50-cy,\n"
    "        score 51 to 75: 51-da, 52-db, 53-dc, 54-dd, ..., 75-dy,\n"
    "        score 76 to 100: 76-ea, 77-eb, 78-ec, 79-ed, ..., 100-ey.\n"
    "\n"
    "        The answer only outputs 2 corresponding letters.\n"
    "        "
)
# UniPercept's scoring question (`modeling_unipercept.py` in thunderbolt215/UniPercept), verbatim,
# including its upstream typo "73-ec, 74-ed". It already starts with the image placeholder, so no
# newline follows the image there.
UNIPERCEPT_QUESTION = (
    "Rate the {desc} score of the image in 0-100. In the output format, numbers are replaced by 2 "
    "corresponding letters, and the mapping relationship is: score 0 to 25: 0-aa, 1-ab, 2-ac, 3-ad, ... , "
    "25-az, \nscore 26 to 50: 26-ca, 27-cb, 28-cc, 29-cd, ..., 50-cy, \nscore 51 to 75: 51-da, 52-db, "
    "53-dc, 54-dd, ..., 75-dy, \nscore 76 to 100: 76-ea, 77-eb, 73-ec, 74-ed, ..., 100-ey. \nThe answer "
    "only outputs 2 corresponding letters."
)

# ArtiMuse's aesthetic attributes and the question its evaluation asks about each one by generation
# (`src/eval/eval_image.py` in thunderbolt215/ArtiMuse), the question joined after "<image>\n".
ARTIMUSE_ASPECTS: tuple[str, ...] = (
    "Composition & Design",
    "Visual Elements & Structure",
    "Technical Execution",
    "Originality & Creativity",
    "Theme & Communication",
    "Emotion & Viewer Response",
    "Overall Gestalt",
    "Comprehensive Evaluation",
)
CRITIQUE_QUESTION = "Please evaluate the aesthetic quality of this image from the aspect of {aspect}."
ANSWER_END = "<|im_end|>"
# Appended to an answer that reached the token cap before its end-of-turn token.
CUT_OFF_MARK = " […cut off at {tokens} tokens]"


def score_token(value: int) -> str:
    """The two-letter answer token for a score of 0..100 (there is no "b" row)."""
    if not 0 <= value <= 100:
        raise ValueError(f"score {value} is outside 0..100")
    for first, start in (("e", 76), ("d", 51), ("c", 26), ("a", 0)):
        if value >= start:
            return first + chr(ord("a") + value - start)
    raise AssertionError("unreachable")


SCORE_TOKENS: tuple[str, ...] = tuple(score_token(value) for value in range(101))


def build_prompt(question: str, system_message: str, num_image_tokens: int, image_on_own_line: bool = True) -> str:
    """The `internvl2_5` chat prompt for one image and one question, ending where the answer starts.

    `image_on_own_line` is how the image placeholder is joined to the question: ArtiMuse prefixes the
    question with "<image>\\n"; UniPercept's question starts with "<image>" and no newline follows.
    """
    image = IMG_START + IMG_CONTEXT * num_image_tokens + IMG_END
    user = image + ("\n" if image_on_own_line else "") + question
    return (
        f"<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def critique_prompt(aspect: str, system_message: str, num_image_tokens: int) -> str:
    """The prompt of ArtiMuse's critique question about one aspect ("<image>\n" before the question)."""
    return build_prompt(CRITIQUE_QUESTION.format(aspect=aspect), system_message, num_image_tokens)


def system_message_of(chat: dict) -> str:
    """The system message a chat config asks for, else the `internvl2_5` template's default."""
    return chat.get("system_message", DEFAULT_SYSTEM_MESSAGE)


# ---------------------------------------------------------------------------------------------------
# Checkpoint: published InternVL-chat layout → transformers' native InternVL
# ---------------------------------------------------------------------------------------------------

# Published InternVL-chat weight name → native `InternVLModel` name ("{i}" is a layer index). The fused
# vision `attn.qkv` is split by rows into q/k/v (thirds, in that order). `language_model.lm_head.weight`
# is not a model weight here: only its 101 score rows are kept.
_VIT, _LAYER = r"vision_model\.encoder\.layers\.(\d+)\.", r"vision_tower.encoder.layer.\1."
CHAT_TO_NATIVE: tuple[tuple[str, str], ...] = (
    (r"vision_model\.embeddings\.class_embedding", "vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "vision_tower.embeddings.position_embeddings"),
    (
        r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
        r"vision_tower.embeddings.patch_embeddings.projection.\1",
    ),
    (_VIT + r"attn\.qkv\.(weight|bias)", _LAYER + r"attention.{q,k,v}_proj.\2"),
    (_VIT + r"attn\.proj\.(weight|bias)", _LAYER + r"attention.projection_layer.\2"),
    (_VIT + r"attn\.(q_norm|k_norm)\.weight", _LAYER + r"attention.\2.weight"),
    (_VIT + r"ls1", _LAYER + "lambda_1"),
    (_VIT + r"ls2", _LAYER + "lambda_2"),
    (_VIT + r"norm1\.(weight|bias)", _LAYER + r"layernorm_before.\2"),
    (_VIT + r"norm2\.(weight|bias)", _LAYER + r"layernorm_after.\2"),
    (_VIT + r"mlp\.(fc1|fc2)\.(weight|bias)", _LAYER + r"mlp.\2.\3"),
    (r"mlp1\.0\.(weight|bias)", r"multi_modal_projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)", r"multi_modal_projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)", r"multi_modal_projector.linear_2.\1"),
    (r"language_model\.model\.(.+)", r"language_model.\1"),
)
LM_HEAD_KEY = "language_model.lm_head.weight"
_COMPILED = tuple((re.compile(pattern), target) for pattern, target in CHAT_TO_NATIVE)

# InternViT config defaults of the published `InternVisionConfig` (they are the 6B model's), applied
# where a checkpoint's vision_config leaves a field out.
_INTERN_VIT_DEFAULTS = {
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 224,
    "qkv_bias": False,
    "hidden_size": 3200,
    "num_attention_heads": 25,
    "intermediate_size": 12800,
    "qk_normalization": True,
    "num_hidden_layers": 48,
    "hidden_act": "gelu",
    "norm_type": "rms_norm",
    "layer_norm_eps": 1e-6,
}
# The eps transformers' native InternVL vision attention normalises q and k with (whatever layer_norm_eps says).
NATIVE_QK_NORM_EPS = 1e-6
# llm_config fields that only steer the published code's own loading (the dtype is chosen per device).
_LLM_CONFIG_DROP = (
    "attn_implementation", "_attn_implementation", "_attn_implementation_autoset", "auto_map", "use_flash_attn",
    "torch_dtype", "dtype", "use_bfloat16",
)  # fmt: skip


def native_key(chat_key: str) -> list[str] | None:
    """The native name(s) for a published weight name: three for a fused qkv, None if unknown."""
    for pattern, target in _COMPILED:
        match = pattern.fullmatch(chat_key)
        if match:
            name = match.expand(target)
            if "{q,k,v}" in name:
                return [name.replace("{q,k,v}", part) for part in ("q", "k", "v")]
            return [name]
    return None


def read_chat_config(folder: Path) -> dict:
    """The checkpoint's config.json, checked to be an InternVL-chat config this scorer can run."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"InternVL-chat checkpoint folder {folder} has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path} as JSON: {error}") from error
    if not isinstance(config, dict) or not all(
        isinstance(config.get(key), dict) for key in ("llm_config", "vision_config")
    ):
        raise ValueError(f"{path} is not an InternVL-chat config: it needs `llm_config` and `vision_config` objects")
    architectures = config["llm_config"].get("architectures") or ["?"]
    if architectures[0] != "Qwen2ForCausalLM":
        raise ValueError(f"{path}: language model {architectures[0]} is not supported (only Qwen2ForCausalLM)")
    template = config.get("template")
    if template not in (None, SUPPORTED_TEMPLATE):
        raise ValueError(f"{path}: conversation template {template!r} is not supported (only {SUPPORTED_TEMPLATE!r})")
    if config.get("ps_version", "v1") != "v2":
        raise ValueError(f"{path}: ps_version {config.get('ps_version', 'v1')!r} is not supported (only 'v2')")
    return config


def vision_settings(chat: dict) -> dict:
    """A chat config's vision_config with the published InternViT defaults where it leaves a field out."""
    return {**_INTERN_VIT_DEFAULTS, **chat["vision_config"]}


def image_geometry(chat: dict) -> tuple[int, int]:
    """(image size, image tokens per tile) from a chat config."""
    vision = vision_settings(chat)
    image_size = chat.get("force_image_size") or vision["image_size"]
    ratio = chat.get("downsample_ratio", 0.5)
    tokens = (image_size // vision["patch_size"]) ** 2 * ratio**2
    if not float(tokens).is_integer():
        raise ValueError(
            f"image size {image_size}, patch {vision['patch_size']} and downsample {ratio} give no whole token count"
        )
    return image_size, int(tokens)


def native_config(chat: dict, image_token_id: int):
    """transformers' `InternVLConfig` equivalent to a published InternVL-chat config."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    vision = vision_settings(chat)
    image_size, tokens = image_geometry(chat)
    vision_config = InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        attention_bias=vision["qkv_bias"],
        use_qk_norm=vision["qk_normalization"],
        hidden_act=vision["hidden_act"],
        norm_type=vision["norm_type"],
        layer_norm_eps=vision["layer_norm_eps"],
        image_size=image_size,
        patch_size=vision["patch_size"],
        num_channels=vision["num_channels"],
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # no norm after the last InternViT layer
        use_mask_token=False,
    )
    if vision["qk_normalization"] and vision["layer_norm_eps"] != NATIVE_QK_NORM_EPS:
        raise ValueError(
            f"vision layer_norm_eps {vision['layer_norm_eps']} with q/k normalisation is not supported: transformers' "
            f"InternVL normalises q and k with eps {NATIVE_QK_NORM_EPS} (every published InternViT-6B uses it)"
        )
    llm = {key: value for key, value in chat["llm_config"].items() if key not in _LLM_CONFIG_DROP}
    llm["tie_word_embeddings"] = False  # InternVLChatConfig forces this for every size
    text_config = Qwen2Config(**llm)
    config = InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=tokens,
        downsample_ratio=chat.get("downsample_ratio", 0.5),
        projector_hidden_act="gelu",
        vision_feature_layer=chat.get("select_layer", -1),
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"  # on every sub-config; no parameter of the typed constructor
    return config


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: the shards named by the index, or model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"cannot read the shard index {index}: {error}") from error
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder} holds no model.safetensors or model.safetensors.index.json")
    absent = [str(path) for path in files if not path.is_file()]
    if absent:
        raise FileNotFoundError(f"shard(s) named in the index of {folder} are missing: {absent}")
    return files


def _preview(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _safetensors(path: Path):
    """An open safetensors file; ValueError for a truncated or non-safetensors one."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # a truncated or non-safetensors file
        raise ValueError(f"cannot read {path} as safetensors: {error}") from error


def weight_problems(model: InternVLModel, files: Sequence[Path]) -> list[str]:
    """Why the published state in `files` would not fill `model` exactly: unknown, missing or mis-shaped weights,
    or no LM head of (vocab_size, hidden_size). Read from the safetensors headers alone, so `model` may live on
    the meta device; empty when the state fits."""
    shapes = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    filled: set[str] = set()
    unknown: list[str] = []
    mismatched: list[str] = []
    head: tuple[int, ...] | None = None
    for path in files:
        with _safetensors(path) as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                shape = tuple(handle.get_slice(key).get_shape())
                if key == LM_HEAD_KEY:
                    head = shape
                    continue
                targets = native_key(key)
                if targets is None or any(target not in shapes for target in targets):
                    unknown.append(key)
                    continue
                part = (shape[0] // 3, *shape[1:]) if len(targets) == 3 else shape
                for target in targets:
                    if part != shapes[target] or (len(targets) == 3 and shape[0] % 3):
                        mismatched.append(f"{key} {shape} → {target} {shapes[target]}")
                        continue
                    filled.add(target)
    problems = []
    if unknown:
        problems.append(f"unknown weights (not in the InternVL-chat layout for this config): {_preview(unknown)}")
    missing = sorted(set(shapes) - filled)
    if missing:
        problems.append(f"missing weights (native names): {_preview(missing)}")
    if mismatched:
        problems.append(f"weights of the wrong shape: {_preview(mismatched)}")
    vocabulary = shapes["language_model.embed_tokens.weight"]  # (vocab_size, hidden_size)
    if head is None:
        problems.append(f"missing weight {LM_HEAD_KEY}")
    elif head != vocabulary:
        problems.append(f"{LM_HEAD_KEY} has shape {head}, not (vocab_size, hidden_size)")
    return problems


def load_chat_weights(model: InternVLModel, files: Sequence[Path]) -> torch.Tensor:
    """Copy a published InternVL-chat state into a native `InternVLModel`, strictly.

    Returns the LM head weight (vocab × hidden, the model's dtype and device). Raises ValueError
    naming unknown, missing or mis-shaped weights (`weight_problems`) before copying any.
    """
    problems = weight_problems(model, files)
    if problems:
        raise ValueError(f"checkpoint {files[0].parent} does not match its config.json: " + "; ".join(problems))
    params = dict(model.named_parameters())
    reference = next(model.parameters())
    head: torch.Tensor | None = None
    for path in files:
        with _safetensors(path) as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key == LM_HEAD_KEY:
                    head = handle.get_tensor(key).to(reference.device, reference.dtype)
                    continue
                targets = native_key(key) or []
                tensor = handle.get_tensor(key)
                with torch.no_grad():
                    for target, part in zip(targets, tensor.chunk(3) if len(targets) == 3 else (tensor,), strict=True):
                        params[target].copy_(part)
    assert head is not None, "weight_problems found the LM head"
    return head


def native_model(config, device: torch.device | str, dtype: torch.dtype) -> InternVLModel:
    """transformers' `InternVLModel` for a native config, its weights uninitialised in `dtype` on `device`
    (the meta device builds it without memory, to check a checkpoint against)."""
    from transformers import InternVLModel

    with _no_init_weights(), _default_dtype(dtype), torch.device(device):
        model = InternVLModel(config)
    stray = {str(p.dtype) for p in model.parameters() if p.dtype != dtype}
    if stray:
        raise RuntimeError(f"the native InternVL model was built with {stray} weights, not {dtype}")
    return model


def dtype_for(device: str) -> torch.dtype:
    """bf16 on CUDA (as the published evaluation runs), float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def _no_init_weights():
    """transformers' context that skips random weight initialisation (the weights are copied in next)."""
    try:
        module = importlib.import_module("transformers.initialization")
    except ImportError:  # transformers 4.x keeps it in modeling_utils
        module = importlib.import_module("transformers.modeling_utils")
    return module.no_init_weights()


def score_token_ids(tokenizer) -> list[int]:
    """The ids of the 101 score tokens; ValueError unless each is exactly one token of this tokenizer."""
    ids: list[int] = []
    bad: list[str] = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in SCORE_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if token_id is None or token_id == unk or encoded != [token_id]:
            bad.append(f"{token!r} → {encoded}")
        ids.append(token_id)
    if bad:
        raise ValueError(
            f"{len(bad)} of the 101 score tokens are not single tokens of this checkpoint's tokenizer: {_preview(bad)}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("the 101 score tokens do not map to 101 distinct token ids")
    return ids


@dataclass(frozen=True)
class LoadedCheckpoint:
    """One InternVL-chat checkpoint in native form, shared by every scorer that reads it."""

    folder: Path
    chat_config: dict
    tokenizer: PreTrainedTokenizerBase
    model: InternVLModel  # no LM head
    lm_head: torch.Tensor  # (vocab, hidden), model dtype: the full head, for the mass diagnostic
    score_ids: tuple[int, ...]
    score_head: torch.Tensor  # (101, hidden) float32: the LM-head rows of the 101 score tokens
    image_token_id: int


_checkpoints: dict[tuple[str, str, torch.dtype], LoadedCheckpoint] = {}
_checkpoints_lock = threading.Lock()


def load_checkpoint(folder: Path, device: str, dtype: torch.dtype) -> LoadedCheckpoint:
    """The checkpoint in `folder` on `device`, loaded on first use in this process, then shared."""
    key = (str(folder.resolve()), str(torch.device(device)), dtype)
    with _checkpoints_lock:
        if key not in _checkpoints:
            _checkpoints[key] = _read_checkpoint(folder, torch.device(device), dtype)
        return _checkpoints[key]


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer the checkpoint in `folder` ships, loaded without its own code (ValueError if it cannot be)."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():  # it warns that config.json is not a tokenizer model type
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except Exception as error:
        raise ValueError(f"cannot load the tokenizer of {folder} without its own code: {error}") from error


def _read_checkpoint(folder: Path, device: torch.device, dtype: torch.dtype) -> LoadedCheckpoint:
    chat = read_chat_config(folder)
    files = weight_files(folder)
    tokenizer = load_tokenizer(folder)
    score_ids = score_token_ids(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    if not isinstance(image_token_id, int) or image_token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"the tokenizer of {folder} has no {IMG_CONTEXT} token")

    model = native_model(native_config(chat, image_token_id), device, dtype)
    lm_head = load_chat_weights(model, files)
    if max(score_ids) >= lm_head.shape[0] or image_token_id >= lm_head.shape[0]:
        raise ValueError(f"the tokenizer of {folder} has ids beyond the model's vocabulary ({lm_head.shape[0]})")
    return LoadedCheckpoint(
        folder=folder,
        chat_config=chat,
        tokenizer=tokenizer,
        model=model.eval(),
        lm_head=lm_head,
        score_ids=tuple(score_ids),
        score_head=lm_head[score_ids].float(),
        image_token_id=image_token_id,
    )


# ---------------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------------


def generating_model(model: InternVLModel, lm_head: torch.Tensor) -> InternVLForConditionalGeneration:
    """transformers' `InternVLForConditionalGeneration` around a loaded `InternVLModel` and its LM head, sharing their weights."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"), _quiet_transformers():
        generator = InternVLForConditionalGeneration(model.config)
    generator.model = model
    head = torch.nn.Linear(lm_head.shape[1], lm_head.shape[0], bias=False, device="meta")
    head.weight = torch.nn.Parameter(lm_head, requires_grad=False)
    generator.lm_head = head
    return generator.eval()


class InternVLTokenExpectationScorer(Scorer, Critic):
    """What every InternVL-chat scorer shares: the expected 0–100 score over the 101 score tokens in one
    forward pass, and critiques by greedy generation. A subclass names its checkpoint and its question."""

    input_side = 448  # the tile side (force_image_size) of every InternVL-chat checkpoint aesq scores with
    folder: ClassVar[str]  # below `weights_dir`
    hub_id: ClassVar[str]  # looked up in the local Hugging Face cache otherwise
    question: ClassVar[str]  # the rating question the checkpoint was trained to answer with a score token
    image_on_own_line: ClassVar[bool] = True  # see `build_prompt`
    aspects = ARTIMUSE_ASPECTS

    @classmethod
    def scoring_prompt(cls, system_message: str, num_image_tokens: int) -> str:
        """The prompt of this scorer's rating question, ending where the score token is read."""
        return build_prompt(cls.question, system_message, num_image_tokens, cls.image_on_own_line)

    def checkpoint_folder(self) -> Path:
        """`weights_dir/<folder>` when it exists, else the local Hugging Face cache (never downloads)."""
        if self.weights_dir is not None and (self.weights_dir / self.folder).exists():
            folder = self.weights_dir / self.folder
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is not a checkpoint folder")
            return folder
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.hub_id, local_files_only=True))
        except Exception as error:  # LocalEntryNotFoundError, offline mode, no hub package, …
            where = self.weights_dir / self.folder if self.weights_dir is not None else f"<weights_dir>/{self.folder}"
            raise FileNotFoundError(
                f"{self.name} weights not found: put the InternVL-chat checkpoint of {self.hub_id} (config.json, "
                f"safetensors, tokenizer files) at {where}, or have {self.hub_id} in the local Hugging Face cache "
                "(nothing is downloaded)"
            ) from error

    def setup(self) -> None:
        """Load (or reuse) the checkpoint as a native InternVL model and tokenize the fixed prompt."""
        self.use_checkpoint(load_checkpoint(self.checkpoint_folder(), self.device, dtype_for(self.device)))

    def use_checkpoint(self, checkpoint: LoadedCheckpoint) -> None:
        """Score with an already loaded (or in-memory built) checkpoint and tokenize the fixed prompt.

        `setup()` calls this with the checkpoint it read from disk; the GPU benchmark calls it with
        a randomly initialised model built in memory. The checkpoint's model must be in `dtype_for(device)`.
        """
        self.dtype = dtype_for(self.device)
        self.checkpoint = checkpoint
        self.model = self.checkpoint.model
        self.tokenizer = self.checkpoint.tokenizer
        chat = self.checkpoint.chat_config
        self.image_size, self.num_image_tokens = image_geometry(chat)
        system_message = system_message_of(chat)
        self.prompt = self.scoring_prompt(system_message, self.num_image_tokens)
        ids = self.tokenizer(self.prompt, return_tensors="pt")["input_ids"]
        if int((ids == self.checkpoint.image_token_id).sum()) != self.num_image_tokens:
            raise ValueError(f"the prompt does not tokenize to {self.num_image_tokens} {IMG_CONTEXT} tokens")
        device = torch.device(self.device)
        self.input_ids = ids.to(device)
        self.system_message = system_message
        self._generator: InternVLForConditionalGeneration | None = None
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One 448×448 tile per image on the CPU, as ArtiMuse's evaluation makes it: `convert("RGB")` first (no
        compositing: transparent pixels keep the colour stored under them), bicubic squash (aspect ignored),
        ImageNet mean/std."""
        size = (self.image_size, self.image_size)
        batch = np.stack([np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC)) for image in images])
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        return ((pixels - self._mean) / self._std).to(self.dtype)

    def score_prepared(self, batch: torch.Tensor) -> list[Score]:
        """Score a batch in one forward pass (every prompt has the same length: no padding).

        Args:
            batch: pixel values from `prepare()`.

        Returns:
            One `Score` per image: the expected score 0..100. `raw` holds `expected`, `argmax` (the
            most likely score), `argmax_probability`, `std` of the score distribution and
            `score_token_mass`, the share of the full next-token distribution on the 101 tokens
            (far below 1 means the model is not answering with a score).
        """
        pixels = batch.to(self.input_ids.device, non_blocking=True)
        input_ids = self.input_ids.expand(len(batch), -1)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, pixel_values=pixels, use_cache=False).last_hidden_state[:, -1]
            logits = hidden.float() @ self.checkpoint.score_head.T  # (batch, 101), float32
            probs = torch.softmax(logits, dim=-1)
            values = torch.arange(101, device=probs.device, dtype=torch.float32)
            expected = probs @ values
            std = (probs @ values.square() - expected.square()).clamp_min(0).sqrt()
            best_probability, best = probs.max(dim=-1)
            # share of the full next-token distribution (last position only) that the 101 tokens hold
            full_logsumexp = torch.logsumexp((hidden @ self.checkpoint.lm_head.T).float(), dim=-1)
            mass = torch.exp(torch.logsumexp(logits, dim=-1) - full_logsumexp).clamp_max(1.0)
        rows = zip(
            expected.tolist(), best.tolist(), best_probability.tolist(), std.tolist(), mass.tolist(), strict=True
        )
        return [
            Score(
                value=e,
                raw={"expected": e, "argmax": float(a), "argmax_probability": p, "std": s, "score_token_mass": m},
            )
            for e, a, p, s, m in rows
        ]

    def critique_prepared(
        self, batch: torch.Tensor, aspects: Sequence[str], max_new_tokens: int
    ) -> list[dict[str, str]]:
        """Answer ArtiMuse's question about each aspect by greedy generation, one `generate` call per aspect.

        Args:
            batch: pixel values from `prepare()`.
            aspects: aspect names put into the question, e.g. `ARTIMUSE_ASPECTS`.
            max_new_tokens: longest answer, in tokens.

        Returns:
            Per image: aspect → answer text (up to the end-of-turn token, stripped); an answer that reached
            `max_new_tokens` first ends with `CUT_OFF_MARK`.
        """
        if self._generator is None:
            self._generator = generating_model(self.model, self.checkpoint.lm_head)
        end_id = self.tokenizer.convert_tokens_to_ids(ANSWER_END)
        pixels = batch.to(self.input_ids.device, non_blocking=True)
        answers: list[dict[str, str]] = [{} for _ in range(len(batch))]
        for aspect in aspects:
            prompt = critique_prompt(aspect, self.system_message, self.num_image_tokens)
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(pixels.device).expand(len(batch), -1)
            with torch.inference_mode():
                output = self._generator.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_id, pad_token_id=end_id,
                )  # fmt: skip
            rows = output[:, ids.shape[1] :].tolist()
            finished = [end_id in row for row in rows]
            texts = self.tokenizer.batch_decode(
                [row[: row.index(end_id)] if done else row for row, done in zip(rows, finished, strict=True)],
                skip_special_tokens=True,
            )
            for answer, text, done in zip(answers, texts, finished, strict=True):
                answer[aspect] = text.strip() + ("" if done else CUT_OFF_MARK.format(tokens=max_new_tokens))
        return answers


class ErnieImageAesScorer(InternVLTokenExpectationScorer):
    """ERNIE-Image-Aes (baidu): 0–100 expected aesthetic score, with ArtiMuse's question and tokens."""

    name = "ernie-aes"
    version = "2"  # 1 composited transparent images on white
    folder = "ERNIE-Image-Aes"
    hub_id = "baidu/ERNIE-Image-Aes"
    question = ARTIMUSE_QUESTION


class ArtiMuseScorer(InternVLTokenExpectationScorer):
    """ArtiMuse (CVPR 2026): 0–100 expected aesthetic score."""

    name = "artimuse"
    version = "2"  # 1 composited transparent images on white
    folder = "ArtiMuse"
    hub_id = "Thunderbolt215215/ArtiMuse"
    question = ARTIMUSE_QUESTION


class UniPerceptScorer(InternVLTokenExpectationScorer):
    """UniPercept's checkpoint, read once and asked one question per variant below."""

    version = "2"  # 1 composited transparent images on white
    folder = "UniPercept"
    hub_id = "Thunderbolt215215/UniPercept"
    image_on_own_line = False


class UniPerceptAestheticsScorer(UniPerceptScorer):
    """UniPercept, image aesthetics (IAA): 0–100."""

    name = "unipercept-aesthetics"
    question = UNIPERCEPT_QUESTION.format(desc="aesthetics")


class UniPerceptQualityScorer(UniPerceptScorer):
    """UniPercept, technical image quality (IQA): 0–100."""

    name = "unipercept-quality"
    question = UNIPERCEPT_QUESTION.format(desc="quality")


class UniPerceptStructureScorer(UniPerceptScorer):
    """UniPercept, structure and texture richness (ISTA): 0–100."""

    name = "unipercept-structure"
    question = UNIPERCEPT_QUESTION.format(desc="structure and texture richness")


INTERNVL_SCORERS: tuple[type[InternVLTokenExpectationScorer], ...] = (
    ErnieImageAesScorer,
    ArtiMuseScorer,
    UniPerceptAestheticsScorer,
    UniPerceptQualityScorer,
    UniPerceptStructureScorer,
)
