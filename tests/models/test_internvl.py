"""InternVL token-as-score scorers on a tiny random model saved in the published InternVL-chat layout.

The tiny model (built in tests/helpers.py) uses transformers' native InternVL classes, randomised, and is
written out under the published (InternVL-chat) weight names by an inverse mapping spelled out there
independently of `aesq.models.internvl`; its ordinary full-vocabulary forward is the reference every
score is checked against.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerFast

from aesq.models import internvl
from aesq.models.base import on_white
from aesq.models.internvl import (
    ArtiMuseScorer,
    ErnieImageAesScorer,
    UniPerceptAestheticsScorer,
    UniPerceptQualityScorer,
    UniPerceptStructureScorer,
)
from tests.helpers import (
    PAIRS,
    VISION,
    VOCAB_SIZE,
    chat_config,
    make_tokenizer,
    native_model,
    noise_image,
    photo,
    to_chat_layout,
    transparent_sticker,
    write_checkpoint,
)

DEFAULT_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
ARTIMUSE_QUESTION = """
        Rate the aesthetics score of the image in 0-100. 
        In the output format, numbers are replaced by 2 corresponding letters, 
        and the mapping relationship is: 
        score 0 to 25: 0-aa, 1-ab, 2-ac, 3-ad, ... , 25-az,
        score 26 to 50: 26-ca, 27-cb, 28-cc, 29-cd, ..., 50-cy,
        score 51 to 75: 51-da, 52-db, 53-dc, 54-dd, ..., 75-dy,
        score 76 to 100: 76-ea, 77-eb, 78-ec, 79-ed, ..., 100-ey.

        The answer only outputs 2 corresponding letters.
        """  # noqa: W291 (the trailing spaces are part of the published question)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def native(tokenizer) -> InternVLForConditionalGeneration:
    return native_model(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))


@pytest.fixture(scope="module")
def chat_state(native) -> dict[str, torch.Tensor]:
    return to_chat_layout(native.state_dict())


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, chat_state, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_checkpoint(root / "ERNIE-Image-Aes", chat_state, chat_config(), tokenizer)
    write_checkpoint(root / "UniPercept", chat_state, chat_config(), tokenizer, sharded=False)
    return root


@pytest.fixture(scope="module")
def ernie(weights_dir) -> ErnieImageAesScorer:
    scorer = ErnieImageAesScorer(weights_dir=weights_dir)
    scorer.setup()
    return scorer


def images() -> list[Image.Image]:
    return [photo("astronaut"), noise_image(1, size=300), photo("coffee").convert("L")]


def reference_pixels(image: Image.Image) -> torch.Tensor:
    """One 448×448 tile: RGB, PIL bicubic squash, /255, ImageNet mean/std (as ArtiMuse's eval transform)."""
    array = np.asarray(image.convert("RGB").resize((448, 448), Image.BICUBIC), dtype=np.float32) / 255.0
    array = (array - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
        [0.229, 0.224, 0.225], dtype=np.float32
    )
    return torch.from_numpy(array).permute(2, 0, 1)


def expected_prompt(question: str, system: str = DEFAULT_SYSTEM, newline: str = "\n") -> str:
    return (
        "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
        + newline + question + "<|im_end|>\n<|im_start|>assistant\n"
    )  # fmt: skip


def reference_scores(native, tokenizer, prompt: str, batch: list[Image.Image]) -> torch.Tensor:
    """Softmax over the 101 pair ids of the ordinary full-vocabulary logits at the last position, @ 0..100."""
    ids = torch.tensor([tokenizer.encode(prompt)] * len(batch))
    pixels = torch.stack([reference_pixels(image) for image in batch])
    with torch.no_grad():
        logits = native(input_ids=ids, pixel_values=pixels).logits
    assert logits.shape == (len(batch), ids.shape[1], VOCAB_SIZE)
    pair_ids = [tokenizer.convert_tokens_to_ids(pair) for pair in PAIRS]
    return torch.softmax(logits[:, -1, pair_ids].float(), dim=-1) @ torch.arange(101, dtype=torch.float32)


def test_score_tokens_follow_the_published_table():
    assert list(internvl.SCORE_TOKENS) == PAIRS and len(set(PAIRS)) == 101
    assert (internvl.score_token(25), internvl.score_token(26), internvl.score_token(75), internvl.score_token(76)) == (
        "az", "ca", "dy", "ea",
    )  # fmt: skip
    with pytest.raises(ValueError):
        internvl.score_token(101)


def test_loader_maps_every_published_weight(weights_dir, native):
    scorer = ErnieImageAesScorer(weights_dir=weights_dir)
    scorer.setup()
    loaded = scorer.model.state_dict()
    reference = native.model.state_dict()
    assert set(loaded) == set(reference)
    for key, tensor in reference.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(scorer.checkpoint.lm_head, native.lm_head.weight, rtol=0, atol=0)
    assert scorer.model.language_model.config._attn_implementation == "sdpa"
    assert scorer.dtype == torch.float32


def test_prompt_is_the_published_one(ernie, tokenizer):
    prompt = expected_prompt(ARTIMUSE_QUESTION)
    assert ernie.prompt == prompt
    ids = ernie.input_ids[0].tolist()
    assert ids == tokenizer.encode(prompt)
    assert tokenizer.decode(ids) == prompt
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids.count(context) == 256
    start, end = (
        ids.index(tokenizer.convert_tokens_to_ids("<img>")),
        ids.index(tokenizer.convert_tokens_to_ids("</img>")),
    )
    assert ids[start + 1 : end] == [context] * 256
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 3
    assert tokenizer.decode(ids[len(ids) - ids[::-1].index(im_start) - 1 :]) == "<|im_start|>assistant\n"


def test_unipercept_prompts_are_one_line_questions_without_newline_after_the_image(weights_dir):
    models = []
    for cls, desc in (
        (UniPerceptAestheticsScorer, "aesthetics"),
        (UniPerceptQualityScorer, "quality"),
        (UniPerceptStructureScorer, "structure and texture richness"),
    ):
        assert cls.folder == "UniPercept"
        scorer = cls(weights_dir=weights_dir)
        scorer.setup()  # the single-file (unsharded) layout
        question = (
            f"Rate the {desc} score of the image in 0-100. In the output format, numbers are replaced by 2 "
            "corresponding letters, and the mapping relationship is: score 0 to 25: 0-aa, 1-ab, 2-ac, 3-ad, ... , "
            "25-az, \nscore 26 to 50: 26-ca, 27-cb, 28-cc, 29-cd, ..., 50-cy, \nscore 51 to 75: 51-da, 52-db, "
            "53-dc, 54-dd, ..., 75-dy, \nscore 76 to 100: 76-ea, 77-eb, 73-ec, 74-ed, ..., 100-ey. \nThe answer "
            "only outputs 2 corresponding letters."
        )
        assert scorer.prompt == expected_prompt(question, newline="")
        models.append(scorer.model)
    assert models[0] is models[1] is models[2]  # one loaded checkpoint, three prompts
    assert {ErnieImageAesScorer.name, ArtiMuseScorer.name} == {"ernie-aes", "artimuse"}
    assert ArtiMuseScorer.question == ErnieImageAesScorer.question == ARTIMUSE_QUESTION


def test_system_message_from_the_checkpoint_config(tmp_path, chat_state, tokenizer):
    write_checkpoint(tmp_path / "ArtiMuse", chat_state, chat_config(system_message="Be brief."), tokenizer)
    scorer = ArtiMuseScorer(weights_dir=tmp_path)
    scorer.setup()
    assert scorer.prompt == expected_prompt(ARTIMUSE_QUESTION, system="Be brief.")


def test_score_equals_the_native_full_vocabulary_forward(ernie, native, tokenizer):
    batch = images()
    expected = reference_scores(native, tokenizer, expected_prompt(ARTIMUSE_QUESTION), batch)
    scores = ernie.score(batch)
    assert len(scores) == 3
    torch.testing.assert_close(torch.tensor([s.value for s in scores]), expected, rtol=0, atol=1e-3)
    # the tiny random model must not be degenerate, or this comparison proves little
    assert expected.max() - expected.min() > 0.5
    for score in scores:
        assert 0 <= score.value <= 100 and score.raw["expected"] == score.value
        assert 0 < score.raw["score_token_mass"] < 1 and 0 < score.raw["argmax_probability"] <= 1
        assert float(score.raw["argmax"]).is_integer() and score.raw["std"] > 0
    torch.testing.assert_close(ernie.prepare(batch), torch.stack([reference_pixels(i) for i in batch]))


def test_transparent_image_is_converted_as_artimuses_evaluation_does(ernie, native, tokenizer):
    """`convert("RGB")` before the resize, keeping the photograph stored under the transparent half, as
    ArtiMuse's `Image.open(path).convert("RGB")`; compositing on white would score another image."""
    sticker = transparent_sticker()
    pixels = ernie.prepare([sticker])
    torch.testing.assert_close(pixels[0], reference_pixels(sticker))
    assert (pixels[0] - reference_pixels(on_white(sticker))).abs().max() > 1
    expected = reference_scores(native, tokenizer, expected_prompt(ARTIMUSE_QUESTION), [sticker])
    assert ernie.score([sticker])[0].value == pytest.approx(float(expected[0]), abs=1e-3)


def test_score_token_mass_matches_the_full_softmax(ernie, native, tokenizer):
    image = photo("astronaut")
    ids = torch.tensor([tokenizer.encode(expected_prompt(ARTIMUSE_QUESTION))])
    with torch.no_grad():
        logits = native(input_ids=ids, pixel_values=reference_pixels(image)[None]).logits[0, -1]
    pair_ids = [tokenizer.convert_tokens_to_ids(pair) for pair in PAIRS]
    mass = torch.softmax(logits.float(), dim=-1)[pair_ids].sum()
    assert ernie.score([image])[0].raw["score_token_mass"] == pytest.approx(float(mass), rel=1e-4)


def test_batch_of_three_equals_three_single_scores(ernie):
    batch = images()
    together = [s.value for s in ernie.score(batch)]
    alone = [ernie.score([image])[0].value for image in batch]
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert ernie.score([]) == []


def test_bfloat16_path_as_on_cuda_agrees_with_float32(weights_dir, ernie, monkeypatch):
    """The CUDA dtype (bf16 weights, float32 score head and softmax), exercised on the CPU."""
    monkeypatch.setattr(internvl, "dtype_for", lambda device: torch.bfloat16)
    scorer = ErnieImageAesScorer(weights_dir=weights_dir)
    scorer.setup()
    assert {p.dtype for p in scorer.model.parameters()} == {torch.bfloat16}
    assert scorer.checkpoint.score_head.dtype == torch.float32
    assert scorer.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    batch = images()
    low = [s.value for s in scorer.score(batch)]
    full = [s.value for s in ernie.score(batch)]
    np.testing.assert_allclose(low, full, atol=0.5)


def _load(weights_dir: Path) -> None:
    ErnieImageAesScorer(weights_dir=weights_dir).setup()


def test_unknown_and_missing_weights_are_refused_by_name(tmp_path, chat_state, tokenizer):
    extra = {**chat_state, "vision_model.encoder.layers.0.attn.extra.weight": torch.zeros(2)}
    write_checkpoint(tmp_path / "extra" / "ERNIE-Image-Aes", extra, chat_config(), tokenizer)
    with pytest.raises(ValueError, match=r"unknown weights.*vision_model\.encoder\.layers\.0\.attn\.extra\.weight"):
        _load(tmp_path / "extra")

    missing = {key: value for key, value in chat_state.items() if key != "mlp1.1.bias"}
    write_checkpoint(tmp_path / "missing" / "ERNIE-Image-Aes", missing, chat_config(), tokenizer)
    with pytest.raises(ValueError, match=r"missing weights.*multi_modal_projector\.linear_1\.bias"):
        _load(tmp_path / "missing")

    headless = {key: value for key, value in chat_state.items() if key != "language_model.lm_head.weight"}
    write_checkpoint(tmp_path / "headless" / "ERNIE-Image-Aes", headless, chat_config(), tokenizer)
    with pytest.raises(ValueError, match=r"missing weight language_model\.lm_head\.weight"):
        _load(tmp_path / "headless")

    # a layer the config does not have is unknown too
    deeper = {**chat_state, "vision_model.encoder.layers.2.ls1": torch.zeros(16)}
    write_checkpoint(tmp_path / "deeper" / "ERNIE-Image-Aes", deeper, chat_config(), tokenizer)
    with pytest.raises(ValueError, match=r"vision_model\.encoder\.layers\.2\.ls1"):
        _load(tmp_path / "deeper")

    wrong = {**chat_state, "mlp1.3.weight": torch.zeros(32, 16)}
    write_checkpoint(tmp_path / "wrong" / "ERNIE-Image-Aes", wrong, chat_config(), tokenizer)
    with pytest.raises(ValueError, match=r"wrong shape.*mlp1\.3\.weight"):
        _load(tmp_path / "wrong")


def test_missing_or_malformed_folder_gives_a_clear_error(tmp_path, weights_dir, monkeypatch):
    import huggingface_hub

    def not_cached(repo_id, **kwargs):
        assert kwargs.get("local_files_only") is True
        raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(FileNotFoundError, match=r"ERNIE-Image-Aes.*baidu/ERNIE-Image-Aes.*nothing is downloaded"):
        _load(tmp_path)
    with pytest.raises(FileNotFoundError, match="Thunderbolt215215/ArtiMuse"):
        ArtiMuseScorer().setup()

    folder = tmp_path / "ERNIE-Image-Aes"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        _load(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*config\.json as JSON"):
        _load(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(ValueError, match="llm_config"):
        _load(tmp_path)
    (folder / "config.json").write_text(json.dumps(chat_config()))
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        _load(tmp_path)
    (folder / "config.json").write_text(json.dumps(chat_config(template="Hermes-2")))
    with pytest.raises(ValueError, match="template 'Hermes-2'"):
        _load(tmp_path)

    # the local Hugging Face cache is the fallback when weights_dir has no such folder
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(weights_dir / "ERNIE-Image-Aes")
    )
    scorer = ErnieImageAesScorer(weights_dir=tmp_path / "elsewhere")
    scorer.setup()
    assert scorer.checkpoint_folder() == weights_dir / "ERNIE-Image-Aes"


def test_a_score_token_that_is_not_one_token_is_refused(tmp_path, chat_state):
    split = make_tokenizer(split="ey")
    write_checkpoint(tmp_path / "ERNIE-Image-Aes", chat_state, chat_config(), split)
    with pytest.raises(ValueError, match=r"1 of the 101 score tokens are not single tokens.*'ey'"):
        _load(tmp_path)


def test_truncated_shard_is_refused(tmp_path, weights_dir):
    folder = tmp_path / "ERNIE-Image-Aes"
    shutil.copytree(weights_dir / "ERNIE-Image-Aes", folder)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cannot read .*model-00002-of-00002\.safetensors"):
        _load(tmp_path)
    assert load_file(str(weights_dir / "ERNIE-Image-Aes" / "model-00001-of-00002.safetensors"))


def test_critique_is_the_native_models_greedy_answer_per_aspect(ernie, native, tokenizer):
    batch = images()[:2]
    aspects = ("Composition & Design", "Technical Execution")
    critiques = ernie.critique(batch, aspects, max_new_tokens=6)
    assert [sorted(c) for c in critiques] == [sorted(aspects)] * 2
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pixels = torch.stack([reference_pixels(image) for image in batch])
    for aspect in aspects:
        question = f"Please evaluate the aesthetic quality of this image from the aspect of {aspect}."
        ids = torch.tensor([tokenizer.encode(expected_prompt(question))] * 2)
        # reference: greedy decoding by hand, the whole sequence re-run for each new token
        for _ in range(6):
            with torch.no_grad():
                next_ids = native(input_ids=ids, pixel_values=pixels).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_ids], dim=1)
        for critique, row in zip(critiques, ids[:, -6:].tolist()):
            # an answer stopped by the cap before its end-of-turn token says so
            answer, ended = (row[: row.index(end)], True) if end in row else (row, False)
            mark = "" if ended else " […cut off at 6 tokens]"
            assert critique[aspect] == tokenizer.decode(answer, skip_special_tokens=True).strip() + mark
    assert any(text for critique in critiques for text in critique.values())  # the tiny model says something
    assert any(text.endswith(" […cut off at 6 tokens]") for critique in critiques for text in critique.values())
    assert ernie.critique([], aspects, 6) == []


def test_published_aspects_are_artimuses_attributes():
    assert internvl.ARTIMUSE_ASPECTS[:7] == (
        "Composition & Design", "Visual Elements & Structure", "Technical Execution", "Originality & Creativity",
        "Theme & Communication", "Emotion & Viewer Response", "Overall Gestalt",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The InternViT-6B tower layout (RMSNorm, q/k norm, no qkv bias) through the same checkpoint mapping
# ---------------------------------------------------------------------------------------------------

# The published vision_config fields that set InternViT-6B's layer layout apart from InternViT-300M's.
INTERN_VIT_6B_LAYOUT: dict[str, Any] = {"qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm"}
VISION_6B = {**VISION, **INTERN_VIT_6B_LAYOUT}
# What the published `InternVisionConfig` (OpenGVLab configuration_intern_vit.py) assumes for a field left out.
PUBLISHED_VISION_DEFAULTS = {
    **INTERN_VIT_6B_LAYOUT, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "patch_size": 14, "num_channels": 3,
}  # fmt: skip
# A vision_config that gives only the (tiny) sizes and leaves everything else to those defaults.
SIZES_ONLY_VISION = {
    key: VISION[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """InternViT's `InternRMSNorm`: normalised in float32, cast back, then scaled."""
    normalised = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalised.to(x.dtype)


def published_intern_vit(state: dict[str, torch.Tensor], vision: dict, pixels: torch.Tensor) -> torch.Tensor:
    """The last hidden state of OpenGVLab's `InternVisionModel`, computed from the published weight names alone."""
    eps, heads = vision["layer_norm_eps"], vision["num_attention_heads"]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        if vision["norm_type"] == "rms_norm":
            return rms_norm(x, state[f"{name}.weight"], eps)
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)

    def linear(x: torch.Tensor, name: str, bias: bool = True) -> torch.Tensor:
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"] if bias else None)

    embeddings = "vision_model.embeddings."
    patches = F.conv2d(
        pixels, state[embeddings + "patch_embedding.weight"], state[embeddings + "patch_embedding.bias"],
        stride=vision["patch_size"],
    ).flatten(2).transpose(1, 2)  # fmt: skip
    x = torch.cat([state[embeddings + "class_embedding"].expand(len(patches), 1, -1), patches], dim=1)
    x = x + state[embeddings + "position_embedding"]  # the published bicubic resize is the identity at 448 px
    batch, tokens, channels = x.shape
    head_dim = channels // heads
    for i in range(vision["num_hidden_layers"]):
        layer = f"vision_model.encoder.layers.{i}."
        qkv = linear(norm(x, layer + "norm1"), layer + "attn.qkv", bias=vision["qkv_bias"])
        q, k, v = qkv.reshape(batch, tokens, 3, heads, head_dim).unbind(2)
        if vision["qk_normalization"]:  # over all heads together, as in the published `_naive_attn`
            q = rms_norm(q.flatten(2), state[layer + "attn.q_norm.weight"], eps).view_as(q)
            k = rms_norm(k.flatten(2), state[layer + "attn.k_norm.weight"], eps).view_as(k)
        q, k, v = (part.transpose(1, 2) for part in (q, k, v))
        attended = torch.softmax((q * head_dim**-0.5) @ k.transpose(-2, -1), dim=-1) @ v
        attention = linear(attended.transpose(1, 2).reshape(batch, tokens, channels), layer + "attn.proj")
        x = x + attention * state[layer + "ls1"]
        mlp = linear(F.gelu(linear(norm(x, layer + "norm2"), layer + "mlp.fc1")), layer + "mlp.fc2")
        x = x + mlp * state[layer + "ls2"]
    return x  # select_layer -1: the last layer's output, no final norm


def load_ernie(root: Path, state: dict[str, torch.Tensor], vision_config: dict, tokenizer) -> ErnieImageAesScorer:
    write_checkpoint(root / "ERNIE-Image-Aes", state, chat_config(vision_config=vision_config), tokenizer)
    scorer = ErnieImageAesScorer(weights_dir=root)
    scorer.setup()
    return scorer


@pytest.fixture(scope="module")
def native_6b(tokenizer) -> InternVLForConditionalGeneration:
    return native_model(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), **INTERN_VIT_6B_LAYOUT)


@pytest.fixture(scope="module")
def chat_state_6b(native_6b) -> dict[str, torch.Tensor]:
    return to_chat_layout(native_6b.state_dict())


@pytest.fixture(scope="module")
def ernie_6b(tmp_path_factory, chat_state_6b, tokenizer) -> ErnieImageAesScorer:
    return load_ernie(tmp_path_factory.mktemp("weights-6b"), chat_state_6b, VISION_6B, tokenizer)


def test_loader_maps_every_published_intern_vit_6b_weight(chat_state_6b, ernie_6b, native_6b):
    """The 6B checkpoint really is in the published 6B layout, and each weight lands on its native twin."""
    vision_keys = {key.removeprefix("vision_model.encoder.layers.0.") for key in chat_state_6b if ".layers.0." in key}
    assert {"attn.q_norm.weight", "attn.k_norm.weight", "attn.qkv.weight", "norm1.weight"} <= vision_keys
    assert not {"attn.qkv.bias", "norm1.bias", "norm2.bias"} & vision_keys
    loaded = ernie_6b.model.state_dict()
    reference = native_6b.model.state_dict()
    assert set(loaded) == set(reference)
    # compared weight by weight: q_norm and k_norm swapped would give the same attention (their scales multiply)
    for key, tensor in reference.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


def test_intern_vit_6b_score_equals_the_native_full_vocabulary_forward(ernie_6b, native_6b, tokenizer):
    """RMSNorm, q/k norm and a bias-free qkv reach the score exactly as transformers' own model computes it."""
    batch = images()
    expected = reference_scores(native_6b, tokenizer, expected_prompt(ARTIMUSE_QUESTION), batch)
    scores = ernie_6b.score(batch)
    torch.testing.assert_close(torch.tensor([s.value for s in scores]), expected, rtol=0, atol=1e-3)
    assert expected.max() - expected.min() > 0.5  # not a degenerate tiny model


@pytest.mark.parametrize(
    ("native_layout", "vision_config", "published_vision"),
    [
        ({}, VISION, VISION),
        (INTERN_VIT_6B_LAYOUT, VISION_6B, VISION_6B),
        (INTERN_VIT_6B_LAYOUT, SIZES_ONLY_VISION, {**PUBLISHED_VISION_DEFAULTS, **SIZES_ONLY_VISION}),
    ],
    ids=["intern-vit-300m", "intern-vit-6b", "intern-vit-6b-sizes-only"],
)
def test_vision_tower_equals_the_published_intern_vit_forward(
    tmp_path, tokenizer, native_layout, vision_config, published_vision
):
    """The loaded tower computes InternViT as published, checked without transformers' InternVL code."""
    native = native_model(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), **native_layout)
    chat_state = to_chat_layout(native.state_dict())
    scorer = load_ernie(tmp_path, chat_state, vision_config, tokenizer)
    pixels = torch.stack([reference_pixels(image) for image in images()])
    with torch.no_grad():
        loaded = scorer.model.vision_tower(pixel_values=pixels).last_hidden_state
    expected = published_intern_vit(chat_state, published_vision, pixels)
    assert loaded.shape == (3, 1 + 32 * 32, 16)
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-5)


def test_a_vision_config_of_sizes_only_gets_the_published_intern_vit_defaults():
    """Fields a checkpoint leaves out take the published `InternVisionConfig` defaults, the 6B layout."""
    vision = internvl.native_config(chat_config(vision_config=SIZES_ONLY_VISION), image_token_id=5).vision_config
    assert (vision.attention_bias, vision.use_qk_norm, vision.norm_type) == (False, True, "rms_norm")
    assert (vision.layer_norm_eps, vision.hidden_act, vision.num_channels) == (1e-6, "gelu", 3)
    assert list(vision.patch_size) == [14, 14] and list(vision.image_size) == [448, 448]
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (16, 2, 2)


def test_q_k_normalisation_with_another_eps_is_refused():
    """transformers normalises q and k with eps 1e-6 whatever the config says; another eps would score wrongly."""
    vision = {**SIZES_ONLY_VISION, "layer_norm_eps": 1e-5}
    with pytest.raises(ValueError, match=r"^vision layer_norm_eps 1e-05 with q/k normalisation is not supported"):
        internvl.native_config(chat_config(vision_config=vision), image_token_id=5)
    internvl.native_config(chat_config(vision_config={**vision, "qk_normalization": False}), image_token_id=5)
