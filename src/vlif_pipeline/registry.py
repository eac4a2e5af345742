"""Every named choice of the pipeline, defined once: models and their parameters, the trainer's
settings, VLIF's fusions, the caption prompts and the visual feature variants.

Why one module, without torch: the configuration's validation (run by the Snakefile before any
job), the rules, the stages' command lines, the models and the reports all read these tables, and
importing torch to validate a YAML file would cost every Snakemake call seconds. The schema's
enums are checked against these tables by ``tests/test_registry.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Model:
    """A recommender the ``train`` stage knows: its class, label, defaults and needs."""

    module: str
    cls: str
    label: str  # its row in the tables
    defaults: dict[str, Any]
    uses_features: bool = False  # reads item features (its run names carry the visual variant)


MODELS: dict[str, Model] = {
    "popularity": Model("vlif_pipeline.models.popularity", "Popularity", "Popularity", {}),
    "bpr": Model("vlif_pipeline.models.bpr", "BPRMF", "BPR", {"embedding_dim": 64, "reg_weight": 1e-4}),
    "lightgcn": Model(
        "vlif_pipeline.models.lightgcn", "LightGCN", "LightGCN", {"embedding_dim": 64, "n_layers": 2, "reg_weight": 1e-4}
    ),
    "freedom": Model(
        "vlif_pipeline.models.freedom",
        "FREEDOM",
        "FREEDOM",
        {  # as MMRec's FREEDOM: reg_weight weights the modality BPR losses (there is no L2), features trainable
            "embedding_dim": 64,
            "n_layers": 2,
            "n_item_layers": 1,
            "edge_drop": 0.8,
            "reg_weight": 1e-4,
            "image_weight": 0.1,  # the item kNN graph mixes image and text 0.1 / 0.9 (the pipeline builds it)
            "trainable_features": True,
        },
        uses_features=True,
    ),
    "vlif": Model(
        "vlif_pipeline.models.vlif",
        "VLIF",
        "VLIF",
        {
            "embedding_dim": 64,
            "mlp_hidden": 64,
            "n_layers": 2,
            "n_item_layers": 2,
            "n_user_layers": 2,
            "fusion": "pid",
            "n_heads": 4,
            "ffn_dim": 64,
            "layer_scale": 0.01,
            "lambda": 0.1,
            "temperature": 0.2,
            "reg_weight": 1e-4,
            "restrict": "auto",
            # where the paper's text and its released code differ (docs/model.md): the text's reading
            "placement": "after",  # fusion after the user-item propagation (before: on item features)
            "rescale_synergy": True,  # s on the scale of v and t (the code: eq. 8 as written)
            "negatives": "batch",  # InfoNCE among the batch's items (the code: all items)
            "user_mix": "sum",  # z_u = f + h over the user-user graph (the code: mean, 0.5 (f + h))
            "user_weights": "softmax",  # per-user part weights through a softmax (the code: at init only)
        },
        uses_features=True,
    ),
}

FUSIONS: dict[str, str] = {  # VLIF's fusion -> its row label in the ablation table (paper Table 2)
    "pid": "PID (VLIF)",
    "pooling": "Pooling",
    "concat": "Concat",
    "weighted_concat": "Weighted Concat",
}

AUTO_TRUE_FALSE = ("auto", True, False)
PARAM_CHOICES: dict[str, tuple[Any, ...]] = {  # parameters with a fixed set of values, any model
    "fusion": tuple(FUSIONS),
    "restrict": AUTO_TRUE_FALSE,
    "native": AUTO_TRUE_FALSE,
    "placement": ("after", "before"),
    "negatives": ("batch", "all"),
    "user_mix": ("sum", "mean"),
    "user_weights": ("softmax", "raw"),
}

TRAINER_DEFAULTS: dict[str, Any] = {  # settings of the training loop, the same for every model
    "learning_rate": 1e-3,
    "batch_size": 1024,
    "max_epochs": 1000,
    "patience": 20,
    "eval_every": 1,
    "seed": 42,
    "eval_batch_size": 512,
    "native": "auto",  # the C kernels on a CPU: auto, true (required) or false (models/native.py)
}

PROMPTS = ("title_cot", "plain", "released")  # caption prompts (vision/prompts.py): ours with and without the
# title, and the released code's title-guided prompt (to its specification, in our words)


@dataclass(frozen=True)
class Variant:
    """A visual feature variant: which captions (prompt) it encodes, or None for CNN features."""

    prompt: str | None
    label: str  # its row label in the tables


VARIANTS: dict[str, Variant] = {  # the `visual__{variant}.npy` files; the one table from prompt to variant
    "original": Variant(None, "Original"),
    "vlm_plain": Variant("plain", "VLM w.o title"),
    "vlm_title": Variant("title_cot", "VLM with title"),
    "vlm_released": Variant("released", "VLM with title, released prompt"),
}


def caption_variant(prompt: str) -> str:
    """The visual variant whose captions come from ``prompt``."""
    return next(name for name, variant in VARIANTS.items() if variant.prompt == prompt)
