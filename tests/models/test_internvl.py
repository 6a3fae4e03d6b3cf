"""InternVL token-as-score scorers on a tiny random model saved in the published InternVL-chat layout.

The tiny model is built with transformers' native InternVL classes, randomised, and written out under
the published (InternVL-chat) weight names by an inverse mapping spelled out here independently of
`aesq.models.internvl`; its ordinary full-vocabulary forward is the reference every score is checked against.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as token_models
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from aesq.models import internvl
from aesq.models.internvl import (
    ArtiMuseScorer,
    ErnieImageAesScorer,
    UniPerceptAestheticsScorer,
    UniPerceptQualityScorer,
    UniPerceptStructureScorer,
)
from tests.helpers import noise_image, photo

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
PAIRS = (
    [f"a{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    + [f"c{chr(c)}" for c in range(ord("a"), ord("y") + 1)]
    + [f"d{chr(c)}" for c in range(ord("a"), ord("y") + 1)]
    + [f"e{chr(c)}" for c in range(ord("a"), ord("y") + 1)]
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
VOCAB_SIZE = 400
VISION = {
    "architectures": ["InternVisionModel"],
    "model_type": "intern_vit_6b",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "image_size": 448,
    "patch_size": 14,
    "num_channels": 3,
    "qkv_bias": True,
    "qk_normalization": False,
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "initializer_factor": 0.1,
    "drop_path_rate": 0.0,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "use_flash_attn": True,
}
LLM = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "attn_implementation": "flash_attention_2",
    "use_cache": True,
}


def chat_config(**extra) -> dict:
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "model_type": "internvl_chat",
        "llm_config": LLM,
        "vision_config": VISION,
        "template": "internvl2_5",
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": 448,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "pad2square": False,
        "torch_dtype": "bfloat16",
        **extra,
    }


def make_tokenizer(split: str | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE with the chat special tokens; every score pair one merged token unless `split`."""
    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for pair in PAIRS:
        if pair != split:
            vocab[pair] = len(vocab)
            merges.append((pair[0], pair[1]))
    tokenizer = Tokenizer(token_models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    assert tokenizer.get_vocab_size() <= VOCAB_SIZE
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def native_model(image_token_id: int) -> InternVLForConditionalGeneration:
    """The tiny model in transformers' own InternVL classes, every weight random (seeded)."""
    vision = InternVLVisionConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=448,
        patch_size=14, attention_bias=True, norm_type="layer_norm", layer_norm_eps=1e-6,
    )  # fmt: skip
    text = Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )  # fmt: skip
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id, image_seq_length=256,
        downsample_ratio=0.5, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.5 if "lm_head" in name or "embed_tokens" in name else 0.2
            parameter.copy_(torch.randn_like(parameter) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    return model


def to_chat_layout(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the published→native mapping, written from InternVL-chat's module names."""
    vision_renames = [
        ("model.vision_tower.", "vision_model."),
        (".encoder.layer.", ".encoder.layers."),
        ("embeddings.cls_token", "embeddings.class_embedding"),
        ("embeddings.position_embeddings", "embeddings.position_embedding"),
        ("embeddings.patch_embeddings.projection", "embeddings.patch_embedding"),
        ("attention.projection_layer", "attn.proj"),
        ("lambda_1", "ls1"),
        ("lambda_2", "ls2"),
        ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"),
    ]
    chat: dict[str, torch.Tensor] = {}
    for key, tensor in native.items():
        if key == "lm_head.weight":
            chat["language_model.lm_head.weight"] = tensor
        elif key.startswith("model.language_model."):
            chat["language_model.model." + key.removeprefix("model.language_model.")] = tensor
        elif key.startswith("model.multi_modal_projector."):
            name = key.removeprefix("model.multi_modal_projector.")
            for old, new in (("layer_norm", "mlp1.0"), ("linear_1", "mlp1.1"), ("linear_2", "mlp1.3")):
                name = name.replace(old, new)
            chat[name] = tensor
        elif key.startswith("model.vision_tower."):
            name = key
            for old, new in vision_renames:
                name = name.replace(old, new)
            if ".attention.k_proj." in name or ".attention.v_proj." in name:
                continue
            if ".attention.q_proj." in name:
                parts = [native[key.replace("q_proj", part)] for part in ("q_proj", "k_proj", "v_proj")]
                chat[name.replace("attention.q_proj", "attn.qkv")] = torch.cat(parts, dim=0)
            else:
                chat[name] = tensor
        else:
            raise AssertionError(f"unexpected native weight {key}")
    return chat


def write_checkpoint(
    folder: Path, state: dict[str, torch.Tensor], config: dict, tokenizer, sharded: bool = True
) -> Path:
    """Write the published layout: config.json, safetensors (sharded with an index, or one file), tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    state = {key: tensor.contiguous().clone() for key, tensor in state.items()}
    if sharded:
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, shard_keys in shards.items():
            save_file({key: state[key] for key in shard_keys}, str(folder / name), metadata={"format": "pt"})
        weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(folder))
    return folder


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
            row = row[: row.index(end)] if end in row else row
            assert critique[aspect] == tokenizer.decode(row, skip_special_tokens=True).strip()
    assert any(text for critique in critiques for text in critique.values())  # the tiny model says something
    assert ernie.critique([], aspects, 6) == []


def test_published_aspects_are_artimuses_attributes():
    assert internvl.ARTIMUSE_ASPECTS[:7] == (
        "Composition & Design", "Visual Elements & Structure", "Technical Execution", "Originality & Creativity",
        "Theme & Communication", "Emotion & Viewer Response", "Overall Gestalt",
    )  # fmt: skip


def write_tiny_ernie(root: Path) -> Path:
    """A weights folder with this tiny model as ERNIE-Image-Aes (for tests of the pipeline around it)."""
    tokenizer = make_tokenizer()
    native = native_model(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    write_checkpoint(root / "ERNIE-Image-Aes", to_chat_layout(native.state_dict()), chat_config(), tokenizer)
    return root
