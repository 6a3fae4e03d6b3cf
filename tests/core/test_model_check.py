"""`aesq models check` on tiny real checkpoints: every check passes on a sound one, and each catches what it is for.

The tiny InternVL-chat checkpoint (tests/helpers.py) ships its tokenizer both as tokenizer.json and as the
vocabulary files a Qwen2 tokenizer is published as; the tiny CLIP stands in for CLIP ViT-L/14.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from aesq.core.config import Settings
from aesq.core.images import decode_image, pixel_budget
from aesq.core.model_check import ModelReport, check_model, image_paths
from aesq.core.model_names import UnknownModel
from aesq.models.internvl import ErnieImageAesScorer
from aesq.models.laion import LaionAestheticV2Scorer
from tests.helpers import (
    LAION_HEAD_FILE,
    LLM,
    answer_with_score_tokens,
    chat_config,
    make_tokenizer,
    native_model,
    photo,
    save_laion_head,
    ship_vocabulary_files,
    to_chat_layout,
    write_checkpoint,
    write_tiny_clip,
    write_tiny_ernie,
)

ERNIE = "ERNIE-Image-Aes"


@pytest.fixture(scope="module")
def answering(tmp_path_factory) -> Path:
    """A weights folder: the tiny ERNIE-Image-Aes shipping its vocabulary files and answering with score tokens."""
    root = write_tiny_ernie(tmp_path_factory.mktemp("answering"))
    ship_vocabulary_files(root / ERNIE)
    answer_with_score_tokens(root / ERNIE)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Three photographs as PNG and JPEG files."""
    folder = tmp_path_factory.mktemp("images")
    photo("astronaut").save(folder / "astronaut.png")
    photo("coffee").save(folder / "coffee.jpg", quality=90)
    photo("chelsea").save(folder / "chelsea.jpg", quality=80)
    return [folder / "astronaut.png", folder / "coffee.jpg", folder / "chelsea.jpg"]


def _verdicts(report: ModelReport) -> dict[str, str]:
    return {check.subject: check.status for check in [*report.checks, *report.outcome]}


def _detail(report: ModelReport, subject: str) -> str:
    return next(check.detail for check in [*report.checks, *report.outcome] if check.subject == subject)


def _decoded(path: Path):
    """The image as scoring decodes it."""
    return decode_image(path.read_bytes(), 64_000_000, pixel_budget(64_000_000))


def _sound_copy(answering: Path, root: Path, **config) -> Path:
    """A copy of the sound tiny checkpoint under `root` whose config.json has `config` fields set."""
    shutil.copytree(answering / ERNIE, root / ERNIE)
    (root / ERNIE / "config.json").write_text(json.dumps(chat_config(**config), ensure_ascii=False))
    return root


def test_every_check_passes_on_a_sound_checkpoint_and_each_image_gets_its_score(answering, images):
    report = check_model("ernie-aes", Settings(weights_dir=answering), images)

    verdicts = _verdicts(report)
    assert not report.failed and set(verdicts.values()) == {"ok", "info"}, report.checks
    for subject in (
        "template", "select_layer", "ps_version", "image size", "image tokens", "rope_scaling", "language model",
        "vocab size", "special tokens", "score tokens", "scoring prompt", "critique prompts", "weights", "model",
        "score-token mass",
    ):  # fmt: skip
        assert verdicts[subject] == "ok", subject
    assert "upstream's slow Qwen2 BPE" in _detail(report, "vocabulary files")
    assert "the same from both; 256 <IMG_CONTEXT>" in _detail(report, "scoring prompt")
    assert _detail(report, "critique prompts").startswith("8 prompts")  # ArtiMuse's eight aspects
    assert "InternVL's default '你是书生·万象" in _detail(report, "system message")
    assert "InternViT-300M layout" in _detail(report, "vision tower")

    scorer = ErnieImageAesScorer(weights_dir=answering)
    scorer.setup()
    expected = scorer.score([_decoded(path) for path in images])
    assert [result.path for result in report.images] == images
    for result, score in zip(report.images, expected, strict=True):
        assert result.problem is None
        assert result.figures["score"] == pytest.approx(score.value, abs=1e-4)
        assert result.figures["argmax"] == score.raw["argmax"]
        assert result.figures["p(argmax)"] == pytest.approx(score.raw["argmax_probability"], abs=1e-5)
        assert result.figures["mass"] == pytest.approx(score.raw["score_token_mass"], abs=1e-5)
        assert result.figures["mass"] >= 0.5
    values = [score.value for score in expected]
    assert _detail(report, "scores") == f"{min(values):.4g} to {max(values):.4g} over 3 images"
    lowest = min(score.raw["score_token_mass"] for score in expected)
    assert _detail(report, "score-token mass").startswith(f"lowest {lowest:.3f}")

    # the checkpoint folder itself, instead of the weights folder holding it
    itself = check_model("ernie-aes", Settings(weights_dir=answering / ERNIE))
    assert _detail(itself, "checkpoint") == str(answering / ERNIE)
    assert _verdicts(itself) == {subject: verdicts[subject] for subject in _verdicts(itself)}


def test_vocabulary_files_that_disagree_with_tokenizer_json_fail_naming_the_prompt_and_the_token(tmp_path):
    folder = write_tiny_ernie(tmp_path) / ERNIE
    ship_vocabulary_files(folder, without_merge="ey")  # merges.txt lacks "e y"; tokenizer.json has it

    report = check_model("ernie-aes", Settings(weights_dir=tmp_path))

    assert report.failed
    verdicts = _verdicts(report)
    assert verdicts["scoring prompt"] == "fail"  # ArtiMuse's question spells out "100-ey"
    assert "tokenizer.json and vocab files differ" in _detail(report, "scoring prompt")
    assert "['ey', '.', 'Ċ'] vs ['e', 'y', '.']" in _detail(report, "scoring prompt")
    assert verdicts["score tokens"] == "fail"
    assert _detail(report, "score tokens").startswith("vocab files: 1 of the 101 score tokens")
    assert "'ey' →" in _detail(report, "score tokens")
    assert verdicts["critique prompts"] == "ok"  # no "ey" in them: they tokenize alike
    assert verdicts["special tokens"] == "ok"


def test_a_score_token_that_is_not_one_token_fails_naming_it(tmp_path):
    split = make_tokenizer(split="ey")
    native = native_model(split.convert_tokens_to_ids("<IMG_CONTEXT>"))
    folder = write_checkpoint(tmp_path / ERNIE, to_chat_layout(native.state_dict()), chat_config(), split)
    ship_vocabulary_files(folder)

    report = check_model("ernie-aes", Settings(weights_dir=tmp_path))

    assert report.failed and _verdicts(report)["score tokens"] == "fail"
    detail = _detail(report, "score tokens")
    assert "tokenizer.json: 1 of the 101 score tokens are not single tokens" in detail and "'ey' →" in detail
    assert "vocab files: 1 of the 101" in detail
    assert _verdicts(report)["scoring prompt"] == "ok"  # both split it alike


@pytest.mark.parametrize(
    ("config", "subject", "verdict", "shown", "fails"),
    [
        ({"template": "Hermes-2"}, "template", "fail", "Hermes-2", True),
        ({"template": "Hermes-2"}, "config.json", "fail", "conversation template 'Hermes-2' is not supported", True),
        ({"ps_version": "v1"}, "ps_version", "fail", "v1 (v2 expected)", True),
        ({"select_layer": -4}, "select_layer", "warn", "-4 (-1 expected", False),
        (
            {"llm_config": {**LLM, "rope_scaling": {"type": "dynamic", "factor": 2.0}}},
            "rope_scaling",
            "warn",
            "dynamic",
            False,
        ),
        (
            {"llm_config": {**LLM, "vocab_size": 300}},
            "vocab size",
            "fail",
            "363 tokens, the model's vocab_size 300",
            True,
        ),
        # the tiles' token count only warns, but the 448-px position embeddings no longer fit a 224-px tower
        ({"force_image_size": 224}, "image tokens", "warn", "64 per tile", True),
        ({"force_image_size": 224}, "weights", "fail", "weights of the wrong shape: vision_model.embeddings.pos", True),
        ({"downsample_ratio": 0.3}, "image size", "fail", "no whole token count", True),
        (
            {"system_message": "You judge images."},
            "system message",
            "info",
            "from config.json: 'You judge images.'",
            False,
        ),
    ],
)
def test_config_fields_are_shown_with_their_verdict(answering, tmp_path, config, subject, verdict, shown, fails):
    report = check_model("ernie-aes", Settings(weights_dir=_sound_copy(answering, tmp_path, **config)))

    assert _verdicts(report)[subject] == verdict
    assert shown in _detail(report, subject)
    assert report.failed == fails


def test_weights_are_checked_without_images_by_name_and_shape(answering, tmp_path):
    """A shard gone, or a weight of another shape, fails at once: nothing needs loading to see it."""
    copy = _sound_copy(answering, tmp_path)
    index = json.loads((copy / ERNIE / "model.safetensors.index.json").read_text())
    (copy / ERNIE / sorted(set(index["weight_map"].values()))[0]).unlink()
    report = check_model("ernie-aes", Settings(weights_dir=copy))
    assert _verdicts(report)["weights"] == "fail" and "missing" in _detail(report, "weights")
    assert _verdicts(check_model("ernie-aes", Settings(weights_dir=answering)))["weights"] == "ok"


def test_q_k_norm_eps_transformers_cannot_follow_fails_the_weights_check(answering, tmp_path):
    vision = {**chat_config()["vision_config"], "qk_normalization": True, "layer_norm_eps": 1e-5}
    report = check_model("ernie-aes", Settings(weights_dir=_sound_copy(answering, tmp_path, vision_config=vision)))
    assert _verdicts(report)["weights"] == "fail"
    assert "with q/k normalisation is not supported" in _detail(report, "weights")


def test_a_system_message_in_the_config_goes_into_every_prompt(answering, tmp_path):
    default = check_model("ernie-aes", Settings(weights_dir=answering))
    own = check_model("ernie-aes", Settings(weights_dir=_sound_copy(answering, tmp_path, system_message="Judge.")))

    assert _detail(own, "scoring prompt") != _detail(default, "scoring prompt")  # fewer ids than the default one
    assert _detail(own, "critique prompts") != _detail(default, "critique prompts")


def test_only_tokenizer_json_and_a_model_not_answering_with_score_tokens_warn(tmp_path, images):
    report = check_model("ernie-aes", Settings(weights_dir=write_tiny_ernie(tmp_path)), images[:2])

    verdicts = _verdicts(report)
    assert not report.failed
    assert verdicts["vocabulary files"] == "warn"
    assert "only tokenizer.json shipped" in _detail(report, "vocabulary files")
    assert "not compared" in _detail(report, "scoring prompt")
    assert verdicts["score-token mass"] == "warn"  # random LM head: most probability on other tokens
    assert "not answering with score tokens" in _detail(report, "score-token mass")
    assert all(result.figures["mass"] < 0.5 for result in report.images)


def test_identical_scores_warn(tmp_path, images):
    twin = tmp_path / "twin.png"
    shutil.copyfile(images[0], twin)

    alike = check_model("technical", Settings(), [images[0], twin])
    apart = check_model("technical", Settings(), images[:2])

    assert _verdicts(alike)["scores"] == "warn" and "all the same" in _detail(alike, "scores")
    assert _verdicts(apart)["scores"] == "info"


def test_a_file_that_is_not_an_image_is_reported_and_the_others_scored(tmp_path, images):
    notes = tmp_path / "notes.txt"
    notes.write_text("no pixels here")

    report = check_model("technical", Settings(), [images[0], notes, images[1]])

    assert [result.problem for result in report.images] == [None, "not an image (no known image format)", None]
    assert all("score" in result.figures for result in report.images if result.problem is None)
    assert _detail(report, "scores").endswith("over 2 images")
    # a folder stands for its image files
    shutil.copyfile(images[1], tmp_path / "coffee.jpg")
    assert image_paths([tmp_path, images[0]]) == [tmp_path / "coffee.jpg", images[0]]
    # no image that could be run is a warning, not a silent pass
    alone = check_model("technical", Settings(), [notes])
    assert _verdicts(alone)["images"] == "warn" and not alone.failed


def test_an_unknown_name_names_the_known_ones():
    with pytest.raises(UnknownModel, match=r"unknown model 'ernie'; scorers: artimuse, ernie-aes, .*embedders: clip"):
        check_model("ernie", Settings())


def test_weights_not_found_is_the_models_own_error(tmp_path, monkeypatch):
    import huggingface_hub

    def not_cached(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(FileNotFoundError, match=r"ernie-aes weights not found: .*ERNIE-Image-Aes"):
        check_model("ernie-aes", Settings(weights_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match="LAION aesthetic head not found"):
        check_model("laion-aes-v2", Settings(weights_dir=write_tiny_clip(tmp_path) / "elsewhere"))


def test_clip_checks_on_the_tiny_clip_and_its_head(tmp_path, images):
    weights = write_tiny_clip(tmp_path / "weights")

    report = check_model("laion-aes-v2", Settings(weights_dir=weights), images)

    verdicts = _verdicts(report)
    assert not report.failed
    assert verdicts["projection_dim"] == verdicts["image_size"] == verdicts["hidden_act"] == verdicts["head"] == "ok"
    assert verdicts["patch_size"] == "warn" and _detail(report, "patch_size") == "32 (ViT-L/14 has 14)"
    assert _detail(report, "dtype") == "float32 on cpu"
    assert _detail(report, "CLIP checkpoint") == str((weights / "clip-vit-large-patch14").resolve())
    scorer = LaionAestheticV2Scorer(weights_dir=weights)
    scorer.setup()
    for result, score in zip(report.images, scorer.score([_decoded(path) for path in images]), strict=True):
        assert result.figures == pytest.approx(
            {"score": score.value, "CLIP norm": score.raw["clip_embedding_norm"]}, abs=1e-5
        )
    # the CLIP folder itself, instead of the weights folder holding it and the head
    itself = check_model("laion-aes-v2", Settings(weights_dir=weights / "clip-vit-large-patch14"))
    assert _verdicts(itself)["head"] == "ok"

    embedded = check_model("clip-vit-l-14", Settings(weights_dir=weights), images[:2])
    assert _verdicts(embedded)["vectors"] == "ok"
    assert [result.figures["dimension"] for result in embedded.images] == [768, 768]
    assert all(np.isclose(result.figures["norm"], 1, atol=1e-5) for result in embedded.images)


def test_a_head_of_another_layout_fails(tmp_path):
    weights = write_tiny_clip(tmp_path)
    save_laion_head(weights / LAION_HEAD_FILE, nn.Linear(768, 1), prefix="layers.0.")

    report = check_model("laion-aes-v2", Settings(weights_dir=weights))

    assert report.failed and _verdicts(report) == {"weights": "fail"}
    assert "does not have the published layout" in _detail(report, "weights")
