"""The offline tiny Qwen2.5-VL: deterministic bytes, reloadable, consistent token ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlif_pipeline.vision import tiny_model
from vlif_pipeline.vision.qwen_inputs import build_batch, load_image_processor


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    paths = root / "a", root / "b", root / "c"
    for path, seed in zip(paths, (7, 7, 8)):
        assert tiny_model.main(["--out-dir", str(path), "--seed", str(seed)]) == 0
    return paths


def test_same_seed_same_bytes(built: tuple[Path, Path, Path]) -> None:
    a, b, c = built
    names = sorted(p.name for p in a.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(names)
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert sum(p.stat().st_size for p in a.iterdir()) < 3_000_000


def test_reloads_with_ids_the_tokenizer_really_has(built: tuple[Path, Path, Path]) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder = built[0]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    cfg = model.config
    ids = tok.convert_tokens_to_ids
    assert len(tiny_model.SPECIAL_TOKENS) == 14
    assert all(tok.convert_ids_to_tokens(ids(t)) == t for t in tiny_model.SPECIAL_TOKENS)
    assert cfg.image_token_id == ids("<|image_pad|>")
    assert (cfg.vision_start_token_id, cfg.vision_end_token_id) == (ids("<|vision_start|>"), ids("<|vision_end|>"))
    assert cfg.text_config.eos_token_id == ids("<|im_end|>") == tok.eos_token_id
    assert cfg.text_config.pad_token_id == ids("<|endoftext|>") == tok.pad_token_id
    assert cfg.text_config.vocab_size == len(tok)
    assert getattr(cfg, tiny_model.TINY_MARKER) is True
    # special tokens stay single tokens inside text
    assert tok("<|vision_start|><|image_pad|><|vision_end|>", add_special_tokens=False)["input_ids"] == [
        ids("<|vision_start|>"), ids("<|image_pad|>"), ids("<|vision_end|>")
    ]


def test_chat_template_is_qwen_style(built: tuple[Path, Path, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built[0])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generates_from_an_image(built: tuple[Path, Path, Path]) -> None:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder = built[0]
    tok = AutoTokenizer.from_pretrained(folder)
    processor = load_image_processor(str(folder))
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    batch = build_batch(tok, processor, [prompt], [Image.new("RGB", (300, 200), (9, 9, 9))])
    with torch.inference_mode():
        out = model.generate(**batch.to("cpu", torch.float32), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, batch.input_ids.shape[1] + 5)
