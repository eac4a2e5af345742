"""What a run's visual modality really was: how many items had a usable image, how many captions
came from an image and how many from the title alone (or, for CNN features, how many items had a
feature record). A run where every image failed must not read like one with images.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from vlif_pipeline.io import StageError, read_parquet_columns
from vlif_pipeline.registry import VARIANTS

MOSTLY_TEXT = 0.5  # below this share of captions from an image, the notes say the modality is mostly text


def visual_summary(
    variant: str, captions: Path | None = None, manifest: Path | None = None, cnn_report: Path | None = None
) -> dict[str, Any]:
    """Counts behind visual variant ``variant``, from the files that made its features."""
    summary: dict[str, Any] = {"variant": variant, "label": VARIANTS[variant].label}
    if captions is not None:
        statuses = Counter(read_parquet_columns(captions, ("status",)).column("status").to_pylist())
        summary.update(
            items=sum(statuses.values()),
            captions_from_image=statuses.get("ok", 0),
            captions_text_only=statuses.get("text_only", 0),
            captions_empty=statuses.get("empty", 0),
            caption_errors=statuses.get("image_error", 0) + statuses.get("failed", 0),
        )
    if manifest is not None:
        images = Counter(read_parquet_columns(manifest, ("status",)).column("status").to_pylist())
        summary.update(items_with_usable_image=images.get("ok", 0), image_statuses=dict(images))
    if cnn_report is not None:
        try:
            report = json.loads(cnn_report.read_text())
            summary.update(items=int(report["n_items"]), items_with_cnn_features=int(report["matched"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StageError(f"{cnn_report}: not a CNN feature report ({type(err).__name__}: {err})") from None
    return summary


def describe(summary: dict[str, Any]) -> str:
    """One sentence for a table or a log."""
    parts = [f"Visual modality ({summary['label']}):"]
    if "items_with_usable_image" in summary:
        parts.append(f"{summary['items_with_usable_image']} of {summary['items']} items had a usable image;")
    if "captions_from_image" in summary:
        parts.append(
            f"{summary['captions_from_image']} captions from an image, {summary['captions_text_only']} from the "
            f"title alone, {summary['captions_empty']} empty, {summary['caption_errors']} failed."
        )
    if "items_with_cnn_features" in summary:
        parts.append(f"{summary['items_with_cnn_features']} of {summary['items']} items have CNN features.")
    if len(parts) == 1:
        parts.append("features as given by the dataset folder.")
    return " ".join(parts)


def notes(summary: dict[str, Any]) -> list[str]:
    """A warning for metrics.json's notes when the visual modality is mostly, or wholly, text."""
    items = summary.get("items") or 0
    from_image = summary.get("captions_from_image", summary.get("items_with_cnn_features"))
    if not items or from_image is None or from_image >= MOSTLY_TEXT * items:
        return []
    return [f"only {from_image} of {items} items have a visual signal: the visual modality is mostly text. "
            + describe(summary)]
