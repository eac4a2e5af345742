"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint offline (stage ``build-tiny-vlm``).

No VLM weights can be downloaded on the project's machines, yet the captioning stage must run for
real in the demo and in tests. This stage writes a folder that ``from_pretrained`` loads exactly like
a hub checkpoint: config with the token ids the tokenizer really has, safetensors weights, a
byte-level BPE tokenizer trained here on a fixed corpus plus Qwen's 14 special tokens, a Qwen-style
chat template and a ``Qwen2VLImageProcessor`` config. Everything is deterministic from the seed, so
the folder's bytes (and therefore the caption cache key) are stable. Its captions are noise.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vlif_pipeline.io import StageError, run_stage, setup_logging
from vlif_pipeline.vision.prompts import PROMPTS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TINY_MARKER = "vlif_tiny_random"
"""Config attribute that marks the checkpoint as random, so the captioner can warn loudly."""

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's chat layout: ``<|im_start|>role\\n...<|im_end|>\\n``, images as vision-start/pad/end."""

VOCAB_SIZE = 1024
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
    max_window_layers=2,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
)
VISION_CONFIG = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    out_hidden_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
    hidden_act="silu",
    in_channels=3,
)
MIN_PIXELS = 56 * 56
MAX_PIXELS = 224 * 224
"""A random model gains nothing from large images; capping them keeps the demo fast."""

_WORDS = {
    "kinds": "bottle blanket stroller carrier toy shoe jacket bag lamp chair cup brush ball rack mat "
    "helmet glove tent watch ring shirt dress sock hat bowl spoon pillow basket seat monitor",
    "colours": "red blue green yellow black white grey pink purple orange brown beige silver gold",
    "materials": "cotton plastic wood metal leather steel rubber wool silicone glass bamboo nylon",
    "shapes": "round square oval flat tall small large soft light heavy compact folding",
    "uses": "baby kids outdoor sports travel home kitchen running camping sleeping feeding bath",
}
_SENTENCES = [
    "This {colour} {kind} is made of {material} and is {shape}, designed for {use} use.",
    "The product is a {shape} {kind} in {colour} {material}, ideal for {use}.",
    "Describe the product in the image. The title is {colour} {material} {kind} for {use}.",
    "Think step by step about what the {kind} is, then give only a final description.",
    "A {colour} {kind} with a {shape} {material} body, easy to clean and safe for {use}.",
]


def training_corpus() -> list[str]:
    """A fixed, deterministic English corpus about products, plus the project's prompt texts.

    The prompts are included so they tokenise into few tokens: prompt length is what the tiny
    model's CPU speed depends on, and real Qwen tokenizers are just as compact on English.
    """
    words = {key: value.split() for key, value in _WORDS.items()}
    rng = random.Random(0)
    lines = []
    for template, kind in itertools.product(_SENTENCES, words["kinds"]):
        for _ in range(4):
            lines.append(
                template.format(
                    kind=kind,
                    colour=rng.choice(words["colours"]),
                    material=rng.choice(words["materials"]),
                    shape=rng.choice(words["shapes"]),
                    use=rng.choice(words["uses"]),
                )
            )
    for spec in PROMPTS.values():
        lines.extend([spec.with_image, spec.without_image] * 8)
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the fixed corpus; special tokens get the lowest ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def build_model_folder(out_dir: Path, seed: int) -> None:
    """Write the whole checkpoint folder (config, weights, tokenizer, processor) into ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vlif_pipeline.vision.qwen_inputs import image_processor_class

    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    config = Qwen2_5_VLConfig(
        text_config={**TEXT_CONFIG, "vocab_size": len(tokenizer), "bos_token_id": pad, "eos_token_id": eos,
                     "pad_token_id": pad},
        vision_config=VISION_CONFIG,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    setattr(config, TINY_MARKER, True)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor = image_processor_class()(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}, patch_size=14, merge_size=2,
        temporal_patch_size=2,
    )
    processor.save_pretrained(out_dir)


def build(out_dir: Path, seed: int) -> None:
    """Build in a sibling temporary folder, then swap it in, so a killed build leaves nothing."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the shared model folder private
        build_model_folder(tmp, seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str]) -> int:
    """CLI: ``build-tiny-vlm --out-dir D --seed S [--log P]``."""
    parser = argparse.ArgumentParser(prog="build-tiny-vlm", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log)

    def body() -> None:
        if args.seed < 0:
            raise StageError(f"--seed must be >= 0, got {args.seed}")
        build(args.out_dir, args.seed)
        size = sum(p.stat().st_size for p in args.out_dir.iterdir())
        logger.warning(
            "built a TINY RANDOMLY INITIALISED Qwen2.5-VL in %s (%.2f MB, seed %d): captions from it are "
            "NOT meaningful; it exists so the pipeline runs offline", args.out_dir, size / 1e6, args.seed,
        )

    return run_stage(body, logger)
