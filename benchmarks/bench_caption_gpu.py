"""Captioning throughput: the project's fast path (`vision.fast_generate`) against plain `generate`.

A Qwen2.5-VL-7B-shaped model with random bf16 weights (no tokenizer or checkpoint needed), 512x512
images (grid 1x36x36, 324 image tokens), ~60 prompt tokens, exactly 128 new tokens. First the
correctness checks, then the timings, all in one run on one machine:

- tokens of the fast path vs `generate` on a small model with the 7B's layer shapes (2 text layers,
  4 vision layers) and images of three sizes, left-padded: in float32 (TF32 off), where they should
  agree exactly, with and without the CUDA graph, and in bf16, where reductions in another order may
  flip near-ties; then a few steps on the 7B-shaped model in bf16;
- the vision tower alone in each layout of its weights (`TowerLayout`);
- `generate` at batch 64 and 128 (its best), then the fast path at 64, 128, 256, 512.

Usage (GPU):  python3 benchmarks/bench_caption_gpu.py
       (CPU):  python3 benchmarks/bench_caption_gpu.py --small     (a shrunken model, a dry run)
Results go to $OUT/bench_caption_gpu.json (or --out), rewritten after every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from vlif_pipeline.vision.fast_generate import decode, greedy_generate, prefill  # noqa: E402
from vlif_pipeline.vision.fast_vision import TowerLayout, encode_images  # noqa: E402
from vlif_pipeline.vision.synthetic import SpecialTokens, prompt_batch  # noqa: E402

IMAGE, VIDEO, VISION_START, VISION_END = 151655, 151656, 151652, 151653
IM_START, IM_END, PAD = 151644, 151645, 151643
TOKENS = SpecialTokens(IMAGE, VISION_START, VISION_END, IM_START, IM_END, PAD)
TEXT_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
               bos_token_id=PAD, eos_token_id=IM_END, sliding_window=32768, max_window_layers=28,
               use_sliding_window=False)
VISION_7B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                 spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                 tokens_per_second=2, hidden_act="silu", in_channels=3)
MROPE_7B = [16, 24, 24]


def model_config(kind: str) -> Qwen2_5_VLConfig:
    """'7b': the real shapes; 'layers': the 7B's layer shapes, 2 text and 4 vision layers; 'tiny': for CPU."""
    text, vision, mrope = dict(TEXT_7B), dict(VISION_7B), MROPE_7B
    if kind == "layers":
        text.update(num_hidden_layers=2, max_window_layers=2)
        vision.update(depth=4, fullatt_block_indexes=[1, 3])
    elif kind == "tiny":
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_window_layers=2)
        vision.update(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                      fullatt_block_indexes=[1])
        mrope = [2, 3, 3]
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END, tie_word_embeddings=False)
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
    try:
        return Qwen2_5_VLConfig(text_config={**text, "rope_parameters": rope}, vision_config=vision, **ids)
    except (TypeError, ValueError, KeyError):  # releases that predate rope_parameters
        return Qwen2_5_VLConfig(text_config={**text, "rope_theta": 1e6, "rope_scaling": {"type": "mrope",
                                "mrope_section": mrope}}, vision_config=vision, **ids)


def build_model(kind: str, dtype: torch.dtype, device: str, std: float) -> Qwen2_5_VLForConditionalGeneration:
    """Random weights: matrices and biases ~ N(0, std), norm weights 1 (a trained model's scale)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(model_config(kind), dtype=dtype,
                                                                attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_q" in name):
                p.fill_(1.0)
            else:
                p.normal_(0, std)
    return model


def make_batch(grids: list[tuple[int, int, int]], prompt_len: int, dtype: torch.dtype, device: str,
               seed: int) -> dict[str, torch.Tensor]:
    """Chat-like left-padded prompts (see ``prompt_batch``), text of prompt_len to prompt_len + 6 tokens."""
    lengths = [prompt_len + i % 7 for i in range(len(grids))]
    batch = prompt_batch(grids, lengths, TOKENS, vocab=PAD, seed=seed)
    return {k: v.to(device, dtype) if k == "pixel_values" else v.to(device) for k, v in batch.items()}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def generate_tokens(model, batch: dict[str, torch.Tensor], new: int, exact: bool) -> torch.Tensor:
    """Plain generate's new tokens. exact: exactly `new` tokens (eos suppressed), as the anchor times;
    else stop at eos and pad, as the captioner runs."""
    extra = dict(min_new_tokens=new) if exact else {}
    out = model.generate(**batch, mm_token_type_ids=(batch["input_ids"] == IMAGE).int(), do_sample=False,
                         max_new_tokens=new, eos_token_id=IM_END, pad_token_id=PAD, **extra)
    fresh = out[:, batch["input_ids"].shape[1]:]
    return torch.nn.functional.pad(fresh, (0, new - fresh.shape[1]), value=PAD)


def agreement(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """Rows identical, and per row the first step where the tokens differ (None: never)."""
    differ = (ours != ref).cpu()
    first = [int(d.nonzero()[0]) if d.any() else None for d in differ]
    return dict(rows=len(first), rows_identical=sum(f is None for f in first), first_divergence=first,
                tokens_equal_before_first_divergence=sum(f if f is not None else ours.shape[1] for f in first))


class Recorder:
    """Accumulates results and rewrites the JSON file after each addition."""

    def __init__(self, path: Path | None, env: dict):
        self.path, self.data = path, {"env": env, "correctness": {}, "timings": []}

    def add(self, section: str, key: str | None, value) -> None:
        if key is None:
            self.data[section].append(value)
        else:
            self.data[section][key] = value
        print(json.dumps({section: value if key is None else {key: value}}), flush=True)
        self.save()

    def attempt(self, section: str, key: str | None, measure: Callable[[], dict], label: str = "") -> dict | None:
        """Run one measurement; a failure is recorded (type, message, last frames) and the run goes on."""
        try:
            value = measure()
        except Exception as exc:  # noqa: BLE001 - one failing measurement must not lose the others
            self.add(section, key, {"what": label or key, "error": f"{type(exc).__name__}: {exc}",
                                    "trace": traceback.format_exc()[-3000:]})
            return None
        self.add(section, key, value)
        return value

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.path)


def check_correctness(rec: Recorder, device: str, small: bool, new: int) -> None:
    """Fast path vs generate, fp32 and bf16, on a model with the 7B's layer shapes (or a tiny one)."""
    grids = [(1, 8, 8), (1, 12, 16), (1, 8, 4), (1, 8, 8)] if small else [(1, 36, 36), (1, 16, 24), (1, 24, 36),
                                                                           (1, 36, 36), (1, 16, 16), (1, 36, 20)]
    kind = "tiny" if small else "layers"
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype in (torch.float32, torch.bfloat16):
        torch.backends.cudnn.allow_tf32 = dtype != torch.float32
        model = build_model(kind, dtype, device, std=0.2 if small else 0.02)
        batch = make_batch(grids, 20, dtype, device, seed=1)

        def compare(model=model) -> dict:
            with torch.inference_mode():
                ref = generate_tokens(model, batch, new, exact=False)
                stock = torch.cat(model.model.get_image_features(batch["pixel_values"],
                                                                 batch["image_grid_thw"]).pooler_output).float()
                ours = encode_images(model.model.visual, batch["pixel_values"], batch["image_grid_thw"]).float()
            result = {"vision_max_abs_diff": float((ours - stock).abs().max()),
                      "vision_max_abs": float(stock.abs().max())}
            if device == "cuda":
                state = prefill(model, **batch, max_new_tokens=new, eos_token_id=IM_END, pad_token_id=PAD)
                eager = decode(model, state, IM_END, PAD, use_cuda_graph=False)
                result["eager"] = agreement(eager, ref)
            ours = greedy_generate(model, **batch, max_new_tokens=new, eos_token_id=IM_END, pad_token_id=PAD)
            result.update(agreement(ours, ref))
            if device == "cuda":
                result["cuda_graph_equals_eager"] = bool(torch.equal(eager, ours))
            return result

        rec.attempt("correctness", f"{kind}_{str(dtype).removeprefix('torch.')}_{new}_tokens", compare)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cudnn.allow_tf32 = True


def time_generate(model, batch: dict, new: int, device: str) -> dict:
    """The anchor's measurement: one forward (prefill), then generate of exactly `new` tokens."""
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        model(**batch, mm_token_type_ids=(batch["input_ids"] == IMAGE).int())
        sync(device)
        t_prefill = time.perf_counter() - t0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        generate_tokens(model, batch, new, exact=True)
        sync(device)
        total = time.perf_counter() - t0
    return dict(prefill_s=t_prefill, decode_s=total - t_prefill, total_s=total)


def time_fast(model, batch: dict, new: int, device: str, use_cuda_graph: bool | None = None) -> dict:
    """Prefill and decode timed apart; eos None so that every row decodes exactly `new` tokens."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    state = prefill(model, **batch, max_new_tokens=new, eos_token_id=None, pad_token_id=PAD)
    sync(device)
    t_prefill = time.perf_counter() - t0
    decode(model, state, None, PAD, use_cuda_graph=use_cuda_graph)
    sync(device)
    total = time.perf_counter() - t0
    return dict(prefill_s=t_prefill, decode_s=total - t_prefill, total_s=total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a shrunken model and short runs (CPU dry run)")
    parser.add_argument("--generate-batches", default=None, help="comma-separated (default 64,128; small: 2,4)")
    parser.add_argument("--fast-batches", default=None, help="comma-separated (default 64,128,256,512; small: 2,4,8)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (small: 8)")
    parser.add_argument("--check-tokens", type=int, default=32, help="new tokens in the correctness checks")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default $OUT/bench_caption_gpu.json)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = args.small
    new = args.new_tokens or (8 if small else 128)
    gen_batches = [int(b) for b in (args.generate_batches or ("2,4" if small else "64,128")).split(",")]
    fast_batches = [int(b) for b in (args.fast_batches or ("2,4,8" if small else "64,128,256,512")).split(",")]
    grid = (1, 8, 8) if small else (1, 36, 36)
    out = args.out or (Path(os.environ["OUT"]) / "bench_caption_gpu.json" if os.environ.get("OUT") else None)
    env = dict(device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu", torch=torch.__version__,
               transformers=transformers.__version__, python=sys.version.split()[0], new_tokens=new,
               image_grid=list(grid), prompt_text_tokens="60..66")
    rec = Recorder(out, env)
    print(json.dumps(env), flush=True)

    if not args.skip_checks:
        check_correctness(rec, device, small, args.check_tokens if not small else 8)

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = build_model("tiny" if small else "7b", dtype, device, std=0.02)
    print(f"model built: {sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    prompt_len = 60

    if not args.skip_checks:
        batch = make_batch([grid] * 8, prompt_len, dtype, device, seed=2)

        def compare(model=model) -> dict:
            with torch.inference_mode():
                ref = generate_tokens(model, batch, 16, exact=False)
            return agreement(greedy_generate(model, **batch, max_new_tokens=16, eos_token_id=IM_END,
                                             pad_token_id=PAD), ref)

        rec.attempt("correctness", f"{'tiny' if small else '7b'}_{str(dtype).removeprefix('torch.')}_16_tokens",
                    compare)

    warm = make_batch([grid] * 2, prompt_len, dtype, device, seed=3)
    with torch.inference_mode():
        generate_tokens(model, warm, 4, exact=True)
    graph_ok = rec.attempt("correctness", "fast_path_warmup", lambda: time_fast(model, warm, 4, device)) is not None

    def measure(engine: str, b: int) -> dict:
        batch = make_batch([grid] * b, prompt_len, dtype, device, seed=b)
        if engine == "generate":
            t = time_generate(model, batch, new, device)
        else:
            t = time_fast(model, batch, new, device, use_cuda_graph=None if graph_ok else False)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
        return dict(engine=engine if engine == "generate" or graph_ok else "fast (eager decode)", batch=b,
                    **{k: round(v, 3) for k, v in t.items()}, images_per_s=round(b / t["total_s"], 2),
                    new_tokens_per_s=round(b * new / t["total_s"], 1), peak_gib=round(peak, 1))

    def vision_layouts() -> dict:
        """Seconds for the vision tower alone, per layout of its weights, at the middle fast batch size."""
        b = fast_batches[len(fast_batches) // 2]
        batch = make_batch([grid] * b, prompt_len, dtype, device, seed=b)
        layouts = {"default": TowerLayout(), "conv3d_patch_embed": TowerLayout(patch_embed_as_matmul=False),
                   "unpadded_mlp": TowerLayout(mlp_width_multiple=1),
                   "conv3d_and_unpadded": TowerLayout(patch_embed_as_matmul=False, mlp_width_multiple=1)}
        result = {"batch": b}
        with torch.inference_mode():
            # One untimed pass at full size first: the allocator's growth must not land on one layout.
            encode_images(model.model.visual, batch["pixel_values"], batch["image_grid_thw"])
            for name, layout in layouts.items():
                encode_images(model.model.visual, warm["pixel_values"], warm["image_grid_thw"], layout)
                sync(device)
                t0 = time.perf_counter()
                encode_images(model.model.visual, batch["pixel_values"], batch["image_grid_thw"], layout)
                sync(device)
                result[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        return result

    rec.data["breakdown"] = {}
    rec.attempt("breakdown", "vision_tower", vision_layouts)

    for engine, batches in (("generate", gen_batches), ("fast", fast_batches)):
        for b in batches:
            rec.attempt("timings", None, lambda: measure(engine, b), label=f"{engine} batch {b}")
            if device == "cuda":
                torch.cuda.empty_cache()

    rows = [r for r in rec.data["timings"] if "error" not in r]
    best = max((r["images_per_s"] for r in rows if r["engine"] == "generate"), default=float("nan"))
    print(f"\n{env['device']}, torch {env['torch']}, transformers {env['transformers']}, {new} new tokens, "
          f"image grid {grid}")
    print("| engine | batch | prefill s | decode s | total s | images/s | new tokens/s | peak GiB | vs best generate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['batch']} | {r['prefill_s']:.2f} | {r['decode_s']:.2f} | {r['total_s']:.2f} | "
              f"{r['images_per_s']:.2f} | {r['new_tokens_per_s']:.0f} | {r['peak_gib']:.1f} | "
              f"{r['images_per_s'] / best:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
