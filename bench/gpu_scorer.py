"""GPU scorer benchmark: throughput, FLOP rate, memory and batch consistency of the 8B InternVL scorer and LAION v2.

Both scorers run through their real code paths (`aesq.models.internvl.ArtiMuseScorer.score`,
`aesq.models.laion.LaionAestheticV2Scorer.score`: preprocessing, forward, score head) on models of the
published architectures with RANDOM weights built directly on the device: nothing is downloaded and
no checkpoint is read, so the speed is the real one and the scores mean nothing.

* `internvl`: InternVL3-8B (InternViT-300M 448 px / patch 14, 24 layers, hidden 1024; pixel shuffle 0.5
  → 256 image tokens; Qwen2.5-7B, 28 layers, hidden 3584, 28 heads / 4 KV heads, MLP 18944, vocab
  151674), as ArtiMuse / ERNIE-Image-Aes ship it, bf16 on CUDA. The tokenizer is a stand-in
  (`PromptLengthTokenizer`) that gives the ArtiMuse prompt about the length the real Qwen2 tokenizer
  does; the token ids themselves are arbitrary, which does not change the cost of a forward pass.
* `laion`: OpenAI CLIP ViT-L/14 vision tower with projection (hidden 1024, 24 layers, patch 14, 224 px,
  768-d) and the LAION v2 MLP head in its published layout, fp16 on CUDA as upstream runs it.

`--config tiny` builds small models of the same architectures for a CPU smoke run (its figures are
not performance figures).

    .venv/bin/python bench/gpu_scorer.py --out bench/out/gpu                 # full models, on CUDA
    .venv/bin/python bench/gpu_scorer.py --config tiny --device cpu --batch-sizes 1,2 --iters 1 --warmup 0
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shlex
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aesq.models import internvl, laion

EXIT_TOLERANCE = 2  # exit status when a batched-vs-single check fails (results are still written)

# --- model sizes -----------------------------------------------------------------------------------

# InternVL-chat config.json of InternVL3-8B (as ArtiMuse / ERNIE-Image-Aes ship it), the fields the
# native translation reads. `tiny` keeps the image geometry (448 px, patch 14, 256 tokens) and the
# prompt, and shrinks widths, depths and vocabulary.
INTERNVL_VISION = {
    "full": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}
INTERNVL_LLM = {
    "full": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
             "intermediate_size": 18944, "vocab_size": 151674},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 1024},
}  # fmt: skip
# Qwen2.5 special-token ids (InternVL adds <img>, </img>, <IMG_CONTEXT>); tiny: the top of its vocabulary.
QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                 "<img>": 151665, "</img>": 151666, "<IMG_CONTEXT>": 151667}  # fmt: skip
CLIP_VISION = {
    "full": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
}
# Qwen2's pre-tokenizer (transformers `tokenization_qwen2.PRETOKENIZE_REGEX`).
QWEN2_PRETOKENIZE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")

INTERNVL_FLOPS = (
    "FLOP/img = 2*N_vit*S_v + 4*L_v*S_v^2*d_v  (InternViT, S_v = 1025 patches+CLS, full attention)"
    " + 2*N_proj*256  (pixel-shuffle MLP)"
    " + 2*N_lm*T + 2*L*T^2*d_attn  (Qwen2 over the T-token prompt, causal attention = half of 4*T^2*d)"
    " + 2*d*(101 + vocab)  (score rows + full-head diagnostic, last position); N = weights of Linear/Conv layers"
)
LAION_FLOPS = (
    "FLOP/img = 2*N_vit*S + 4*L*S^2*d  (CLIP ViT, S = 257 patches+CLS, full attention; N includes the"
    " 1024->768 projection) + 2*N_head  (MLP head); N = weights of Linear/Conv layers"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full", help="model sizes (tiny: CPU smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="internvl,laion", help="comma-separated: internvl, laion")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per batch size and measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing each batch size")
    parser.add_argument("--image-size", type=int, default=448, help="side of the random square input images")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=790.0,
        help="peak for MFU (default: measured dense bf16 matmul peak of an H100)",
    )
    parser.add_argument(
        "--tolerance-internvl",
        type=float,
        default=None,
        help="max |batched - single| in score points (0..100); default 0.5 in bf16, 1e-3 in fp32",
    )
    parser.add_argument(
        "--tolerance-laion",
        type=float,
        default=None,
        help="max |batched - single| in score units; default 0.05 in fp16, 1e-4 in fp32",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args(argv)
    args.batch_sizes = sorted({int(part) for part in args.batch_sizes.split(",") if part.strip()})
    args.models = [part.strip() for part in args.models.split(",") if part.strip()]
    unknown = set(args.models) - {"internvl", "laion"}
    if unknown or not args.models:
        parser.error(f"--models takes internvl and/or laion, not {sorted(unknown) or args.models}")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("batch sizes and --iters must be >= 1, --warmup >= 0")
    if args.config == "full" and torch.device(args.device).type == "cpu":
        parser.error("--config full on CPU needs ~32 GB of fp32 weights and hours per batch; use --config tiny")
    return args


# --- random weights, built in place --------------------------------------------------------------


def fill_random(model: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Give every parameter of an uninitialised model a small random value (in place, on its device).

    Norm weights 1 and biases 0 (so activations keep a sane scale through all layers), layer scales
    0.1 (InternViT's initial value), everything else N(0, std²).
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name and parameter.ndim == 1:
                parameter.fill_(1.0 if leaf == "weight" else 0.0)
            elif leaf == "bias":
                parameter.zero_()
            elif leaf.startswith("lambda"):
                parameter.fill_(0.1)
            else:
                parameter.normal_(0.0, std, generator=generator)
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point() and not torch.isfinite(buffer).all():
                raise RuntimeError(f"buffer {name} is not finite after building on the device")


def matmul_weights(module: nn.Module) -> int:
    """Parameters of the Linear and Conv layers in `module` (weights only: the FLOP-bearing ones)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d))


def device_generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


class PromptLengthTokenizer:
    """Stand-in for the checkpoint's Qwen2 tokenizer: exact special tokens, approximately the right length.

    Special tokens (<|im_start|>, <img>, <IMG_CONTEXT>, …) become their own ids; other text is split
    with Qwen2's pre-tokenizer regex and each piece counts as one token (each CJK character as one),
    which is how Qwen2's 151k-token BPE treats ordinary English words, digits, punctuation runs and
    whitespace runs. The length is an estimate (a few tokens either way); the ids are arbitrary
    (a hash of the piece), which does not change the cost of a forward pass.
    """

    def __init__(self, specials: dict[str, int], ordinary: range) -> None:
        import regex

        self.specials = dict(specials)
        self.ordinary = ordinary
        self._split = re.compile(
            "(" + "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True)) + ")"
        )
        self._pieces = regex.compile(QWEN2_PRETOKENIZE)
        self.unk_token_id = None

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self.specials:
                ids.append(self.specials[part])
                continue
            for piece in self._pieces.findall(part):
                cjk = len(CJK.findall(piece))
                rest = CJK.sub("", piece).strip()
                count = cjk + (1 if rest or not cjk else 0)
                for index in range(count):
                    ids.append(self.ordinary[zlib.crc32(f"{piece}\0{index}".encode()) % len(self.ordinary)])
        return ids

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.specials.get(token)

    def __call__(self, text: str, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([self.encode(text)], dtype=torch.long)}


def internvl_chat_config(size: str) -> dict:
    """An InternVL-chat config.json (InternVL3-8B layout) for `size`."""
    return {
        "template": "internvl2_5",
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": 448,
        "vision_config": {
            **INTERNVL_VISION[size], "image_size": 448, "patch_size": 14, "num_channels": 3, "qkv_bias": True,
            "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu",
        },
        "llm_config": {
            **INTERNVL_LLM[size], "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "tie_word_embeddings": False, "use_cache": False,
        },
    }  # fmt: skip


def build_internvl(size: str, device: str, seed: int) -> tuple[internvl.ArtiMuseScorer, dict]:
    """An ArtiMuse scorer over a randomly initialised InternVL3-8B-architecture model on `device`."""
    from transformers import InternVLModel

    dtype = internvl.dtype_for(device)
    chat = internvl_chat_config(size)
    vocab = chat["llm_config"]["vocab_size"]
    if size == "full":
        specials = QWEN_SPECIALS
    else:
        specials = {token: vocab - 1 - index for index, token in enumerate(QWEN_SPECIALS)}
    tokenizer = PromptLengthTokenizer(specials, range(min(specials.values())))
    image_token_id = specials[internvl.IMG_CONTEXT]
    config = internvl.native_config(chat, image_token_id)
    started = time.perf_counter()
    with internvl._no_init_weights(), internvl._default_dtype(dtype), torch.device(device):
        model = InternVLModel(config)
        lm_head = torch.empty(vocab, config.text_config.hidden_size, dtype=dtype)
    generator = device_generator(device, seed)
    fill_random(model, generator)
    lm_head.normal_(0.0, 0.02, generator=generator)
    stray = {str(p.dtype) for p in model.parameters() if p.dtype != dtype}
    if stray:
        raise RuntimeError(f"the InternVL model was built with {stray} weights, not {dtype}")
    score_ids = tuple(range(1000, 1101)) if size == "full" else tuple(range(100, 201))  # arbitrary, distinct
    checkpoint = internvl.LoadedCheckpoint(
        folder=Path(f"<random {size} InternVL3-8B architecture>"),
        chat_config=chat,
        tokenizer=tokenizer,
        model=model.eval(),
        lm_head=lm_head,
        score_ids=score_ids,
        score_head=lm_head[list(score_ids)].float(),
        image_token_id=image_token_id,
    )
    scorer = internvl.ArtiMuseScorer(weights_dir=None, device=device)
    scorer.use_checkpoint(checkpoint)
    _sync(device)
    build_s = time.perf_counter() - started

    vision, text = config.vision_config, config.text_config
    patches = (vision.image_size[0] // vision.patch_size[0]) ** 2 + 1 if isinstance(vision.image_size, list | tuple) \
        else (vision.image_size // vision.patch_size) ** 2 + 1  # fmt: skip
    prompt_tokens = int(scorer.input_ids.shape[1])
    n_vit = matmul_weights(model.vision_tower)
    n_proj = matmul_weights(model.multi_modal_projector)
    n_lm = matmul_weights(model.language_model)
    d_attn = text.num_attention_heads * (
        getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    )
    flops = {
        "vit": 2 * n_vit * patches + 4 * vision.num_hidden_layers * patches**2 * vision.hidden_size,
        "projector": 2 * n_proj * scorer.num_image_tokens,
        "lm": 2 * n_lm * prompt_tokens + 2 * text.num_hidden_layers * prompt_tokens**2 * d_attn,
        "head": 2 * text.hidden_size * (101 + vocab),
    }
    info = {
        "architecture": "InternVL3-8B (InternViT-300M + Qwen2.5-7B)" if size == "full" else "InternVL3 (tiny)",
        "scorer": "aesq.models.internvl.ArtiMuseScorer",
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()) + lm_head.numel(),
        "matmul_weights": {"vit": n_vit, "projector": n_proj, "lm": n_lm},
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_note": "length from PromptLengthTokenizer (Qwen2 pre-tokenizer pieces): an estimate of "
        "the real tokenizer's length; the ids are arbitrary",
        "image_tokens": scorer.num_image_tokens,
        "vit_tokens": patches,
        "tokens_per_image": prompt_tokens,
        "tokens_label": "LM prompt tokens",
        "flops_per_image": sum(flops.values()),
        "flops_parts": flops,
        "flop_formula": INTERNVL_FLOPS,
        "build_s": build_s,
    }
    return scorer, info


def build_laion(size: str, device: str, seed: int) -> tuple[laion.LaionAestheticV2Scorer, dict]:
    """A LAION v2 scorer over a randomly initialised CLIP ViT-L/14 vision tower and a random head."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    dtype = laion._dtype_for(device)
    config = CLIPVisionConfig(
        **CLIP_VISION[size], image_size=laion.INPUT_SIZE, patch_size=14, projection_dim=laion.EMBEDDING_DIMENSION,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    started = time.perf_counter()
    with internvl._no_init_weights(), internvl._default_dtype(dtype), torch.device(device):
        model = CLIPVisionModelWithProjection(config)
    generator = device_generator(device, seed + 1)
    fill_random(model, generator)
    torch.manual_seed(seed)
    head = laion.AestheticHead()  # the published layout, PyTorch's default init
    with torch.no_grad():
        head.layers[7].bias.fill_(5.0)  # scores around 5, like the real head's 1-10
    encoder = laion.ClipEncoder(model=model.eval(), device=device, dtype=dtype)
    scorer = laion.LaionAestheticV2Scorer(weights_dir=None, device=device)
    scorer.use(head, encoder)
    _sync(device)
    build_s = time.perf_counter() - started

    patches = (config.image_size // config.patch_size) ** 2 + 1
    n_vit = matmul_weights(model)
    n_head = matmul_weights(head)
    flops = {
        "vit": 2 * n_vit * patches + 4 * config.num_hidden_layers * patches**2 * config.hidden_size,
        "head": 2 * n_head,
    }
    info = {
        "architecture": "CLIP ViT-L/14 + LAION v2 MLP head" if size == "full" else "CLIP ViT/14 (tiny) + LAION v2 head",
        "scorer": "aesq.models.laion.LaionAestheticV2Scorer",
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters()),
        "matmul_weights": {"vit": n_vit, "head": n_head},
        "vit_tokens": patches,
        "tokens_per_image": patches,
        "tokens_label": "ViT tokens",
        "flops_per_image": sum(flops.values()),
        "flops_parts": flops,
        "flop_formula": LAION_FLOPS,
        "build_s": build_s,
    }
    return scorer, info


# --- measurement -----------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(call: Callable[[], object], device: str, iters: int, warmup: int) -> tuple[float, object]:
    """Median seconds of `iters` calls after `warmup` untimed ones, and the last call's result."""
    result = None
    for _ in range(warmup):
        result = call()
    _sync(device)
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        result = call()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def random_images(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(count)]


def fresh(images: Sequence[Image.Image]) -> list[Image.Image]:
    """New image objects with the same pixels (CLIP's encoder reuses a result for the very same objects)."""
    return [image.copy() for image in images]


def internvl_steps(scorer: internvl.InternVLTokenExpectationScorer):
    """(end to end, preprocessing only, forward only) calls for a batch of images."""

    def end_to_end(images, calls: int):
        return lambda: [score.value for score in scorer.score(images)]

    def preprocess(images):
        return lambda: scorer.prepare(images)

    def forward(images):
        pixels = scorer.prepare(images).to(scorer.input_ids.device)
        input_ids = scorer.input_ids.expand(len(images), -1)

        def call():
            with torch.inference_mode():
                return scorer.model(input_ids=input_ids, pixel_values=pixels, use_cache=False).last_hidden_state

        return call

    return end_to_end, preprocess, forward


def laion_steps(scorer: laion.LaionAestheticV2Scorer):
    encoder = scorer._clip

    def end_to_end(images, calls: int):
        # Distinct image objects for each call, made before timing: the encoder returns its cached
        # result when it is handed the very same objects again.
        copies = [fresh(images) for _ in range(calls)]

        def call():
            return [score.value for score in scorer.score(copies.pop())]

        return call

    def preprocess(images):
        return lambda: laion.clip_batch(images).to(encoder.device, encoder.dtype)

    def forward(images):
        pixels = preprocess(images)()

        def call():
            with torch.inference_mode():
                return encoder.model(pixel_values=pixels).image_embeds

        return call

    return end_to_end, preprocess, forward


def measure(name: str, scorer, info: dict, args: argparse.Namespace, tolerance: float) -> list[dict]:
    """Per batch size: img/s end to end and forward only, preprocessing time, FLOP rate, memory, consistency."""
    steps = internvl_steps(scorer) if name == "internvl" else laion_steps(scorer)
    end_to_end, preprocess, forward = steps
    cuda = torch.device(args.device).type == "cuda"
    pool = random_images(max(args.batch_sizes), args.image_size, args.seed)
    # Reference: every image scored alone (the batch-size-1 path).
    single = []
    for image in pool:
        single.extend(end_to_end([image], 1)())
    rows = []
    for batch_size in args.batch_sizes:
        images = pool[:batch_size]
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            e2e_s, values = timed(end_to_end(images, args.warmup + args.iters), args.device, args.iters, args.warmup)
            pre_s, _ = timed(preprocess(images), args.device, args.iters, args.warmup)
            fwd_s, _ = timed(forward(images), args.device, args.iters, args.warmup)
        except torch.OutOfMemoryError as error:
            rows.append({"batch_size": batch_size, "error": f"out of memory: {str(error).splitlines()[0]}"})
            torch.cuda.empty_cache()
            continue
        diff = max(abs(a - b) for a, b in zip(values, single[:batch_size], strict=True))
        e2e_ips, fwd_ips = batch_size / e2e_s, batch_size / fwd_s
        flops = info["flops_per_image"]
        rows.append({
            "batch_size": batch_size,
            "end_to_end_s": e2e_s,
            "preprocess_s": pre_s,
            "forward_s": fwd_s,
            "img_per_s": e2e_ips,
            "forward_img_per_s": fwd_ips,
            "tokens_per_s": info["tokens_per_image"] * e2e_ips,
            "tflops_per_s": flops * e2e_ips / 1e12,
            "forward_tflops_per_s": flops * fwd_ips / 1e12,
            "mfu": flops * e2e_ips / 1e12 / args.peak_tflops,
            "forward_mfu": flops * fwd_ips / 1e12 / args.peak_tflops,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "max_abs_batched_minus_single": diff,
            "tolerance": tolerance,
            "within_tolerance": bool(math.isfinite(diff) and diff <= tolerance),
            "score_range": [min(values), max(values)],
        })  # fmt: skip
    return rows


def table(name: str, info: dict, rows: list[dict], args: argparse.Namespace) -> str:
    """A plain-text table of one model's figures."""
    lines = [
        f"== {name}: {info['architecture']}, random {info['dtype']} weights, {info['parameters'] / 1e6:,.1f} M params, "
        f"{info['flops_per_image'] / 1e9:,.1f} GFLOP/img, {info['tokens_per_image']} {info['tokens_label']}/img",
        f"   {info['flop_formula']}",
        f"   MFU vs --peak-tflops {args.peak_tflops:g}; e2e = {info['scorer']}.score (preprocessing + forward + "
        "head); fwd = model forward on preprocessed pixels",
    ]
    header = (f"{'batch':>5} | {'e2e img/s':>10} | {'fwd img/s':>10} | {'prep ms':>8} | {'tok/s':>10} | "
              f"{'TFLOP/s':>8} | {'fwd TFLOP/s':>11} | {'MFU':>6} | {'fwd MFU':>7} | {'peak GiB':>8} | "
              f"{'max|b-s|':>9} | ok")  # fmt: skip
    lines += [header, "-" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['batch_size']:>5} | {row['error']}")
            continue
        memory = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "-"
        lines.append(
            f"{row['batch_size']:>5} | {row['img_per_s']:>10.2f} | {row['forward_img_per_s']:>10.2f} | "
            f"{row['preprocess_s'] * 1e3:>8.2f} | {row['tokens_per_s']:>10.0f} | {row['tflops_per_s']:>8.3f} | "
            f"{row['forward_tflops_per_s']:>11.3f} | {row['mfu']:>6.1%} | {row['forward_mfu']:>7.1%} | {memory:>8} | "
            f"{row['max_abs_batched_minus_single']:>9.2e} | {'yes' if row['within_tolerance'] else 'NO'}"
        )
    return "\n".join(lines)


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import transformers

    torch.manual_seed(args.seed)
    internvl_half = internvl.dtype_for(args.device) != torch.float32
    laion_half = laion._dtype_for(args.device) != torch.float32
    tolerances = {
        "internvl": args.tolerance_internvl
        if args.tolerance_internvl is not None
        else (0.5 if internvl_half else 1e-3),
        "laion": args.tolerance_laion if args.tolerance_laion is not None else (0.05 if laion_half else 1e-4),
    }
    results = {
        "benchmark": "gpu_scorer",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv] if argv is None else ["bench/gpu_scorer.py", *argv]),
        "device": device_name(args.device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "config": args.config,
        "image_size": args.image_size,
        "iters": args.iters,
        "warmup": args.warmup,
        "peak_tflops": args.peak_tflops,
        "weights": "random (no checkpoint): speed is real, scores are meaningless",
        "models": {},
    }
    if args.config == "tiny":
        results["note"] = "tiny models: a smoke run of the code path, not performance figures"
    print(f"device: {results['device']} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"config {args.config}")  # fmt: skip
    failed = False
    builders = {"internvl": build_internvl, "laion": build_laion}
    for name in args.models:
        scorer, info = builders[name](args.config, args.device, args.seed)
        print(f"\nbuilt {name} in {info['build_s']:.1f} s")
        rows = measure(name, scorer, info, args, tolerances[name])
        print(table(name, info, rows, args))
        results["models"][name] = {**info, "per_batch": rows}
        failed |= any(not row.get("within_tolerance", True) for row in rows)
        del scorer
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"\nwrote {args.out / 'results.json'}")
    if failed:
        print("FAILED: a batched score differs from the single-image score by more than the tolerance", file=sys.stderr)
        return EXIT_TOLERANCE
    return 0


if __name__ == "__main__":
    sys.exit(main())
