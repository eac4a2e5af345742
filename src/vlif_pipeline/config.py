"""The one place where configuration is validated, merged per dataset and turned into names.

The Snakefile calls `validate` before any job starts, so a bad value stops the run with a message
naming the key and the problem; rules then read every stage parameter through `dataset_config`,
which applies a dataset's own overrides over the global sections.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

STAGE_SECTIONS = (
    "seed", "kcore", "split", "missing_meta", "ingest", "images", "vlm", "text_encoder",
    "captions", "graphs", "train", "report",
)
LOCATION_KEYS = ("reviews", "meta", "image_features", "path")
AMAZON_FORMATS = ("amazon2014", "amazon2018", "amazon2023")
TINY_VLM = "tiny-random"
"""Reserved `vlm.model` value: a randomly initialised tiny Qwen2.5-VL that the pipeline builds."""


class ConfigError(ValueError):
    """A configuration problem, phrased for the user: which key, what is wrong."""


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _key_path(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(config: dict[str, Any], schema_file: str | Path, workdir: str | Path = ".") -> None:
    """Check `config` against the JSON schema and that every local input path exists.

    Raises `ConfigError` listing every problem, one line each, as `key: problem`.
    """
    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{_key_path(err.absolute_path)}: {_describe(err)}")
    for name, entry in (config.get("datasets") or {}).items():
        if not isinstance(entry, dict):
            continue
        for key in LOCATION_KEYS:
            location = entry.get(key)
            if isinstance(location, str) and not is_url(location) and not (Path(workdir) / location).exists():
                problems.append(f"datasets.{name}.{key}: local path '{location}' does not exist")
        train = {**config.get("train", {}), **entry.get("train", {})}
        if entry.get("format") == "mmrec" and train.get("visual") == "vlm":
            problems.append(
                f"datasets.{name}.train.visual: 'vlm' needs images and titles, which an MMRec folder "
                "does not have; set it to 'original'"
            )
        needs_cnn_features = train.get("visual") == "original" and "image_features" not in entry
        if entry.get("format") in AMAZON_FORMATS and needs_cnn_features:
            problems.append(
                f"datasets.{name}.train.visual: 'original' needs the dataset's CNN features; "
                f"set datasets.{name}.image_features or use 'vlm'"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _describe(err: jsonschema.ValidationError) -> str:
    """Shorten jsonschema's wording: the key is already named, the value and the rule suffice."""
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {', '.join(map(repr, err.validator_value))}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required")
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key(s)")
    return err.message


def dataset_config(config: dict[str, Any], ds: str) -> dict[str, Any]:
    """The global stage sections with dataset `ds`'s overrides merged in (dicts merge key by key)."""
    if ds not in config["datasets"]:
        known = ", ".join(sorted(config["datasets"]))
        raise ConfigError(f"datasets.{ds}: no such dataset in the configuration (known: {known})")
    entry = config["datasets"][ds]
    merged = {key: copy.deepcopy(config[key]) for key in STAGE_SECTIONS}
    for key in STAGE_SECTIONS:
        if key in entry:
            value = entry[key]
            merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    merged["dataset"] = {k: v for k, v in entry.items() if k not in STAGE_SECTIONS}
    return merged


def slug(text: str) -> str:
    """A file-name-safe form of a model id: `Qwen/Qwen2.5-VL-7B-Instruct` -> `Qwen--Qwen2.5-VL-7B-Instruct`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-")


def visual_variant(cfg: dict[str, Any]) -> str:
    """The visual feature file a run uses: original CNN features, or captions of `vlm.prompt`."""
    if cfg["train"]["visual"] == "original":
        return "original"
    return "vlm_title" if cfg["vlm"]["prompt"] == "title_cot" else "vlm_plain"


VARIANT_PROMPT = {"vlm_title": "title_cot", "vlm_plain": "plain"}
RUN_FUSIONS = ("pid", "pooling", "concat", "weighted_concat")

FEATURE_MODELS = {"vlif", "freedom"}


def run_id(model: str, variant: str | None = None, fusion: str | None = None) -> str:
    """Name of a training run folder: `vlif__vlm_title__pid`, `freedom__original`, `lightgcn`."""
    if model == "vlif":
        return f"vlif__{variant}__{fusion}"
    if model in FEATURE_MODELS:
        return f"{model}__{variant}"
    return model


def parse_run_id(run: str) -> dict[str, str | None]:
    """Inverse of `run_id`; raises `ConfigError` for a name the pipeline would never produce."""
    parts = run.split("__")
    model = parts[0]
    expected = 3 if model == "vlif" else 2 if model in FEATURE_MODELS else 1
    known = (
        model in FEATURE_MODELS | {"popularity", "bpr", "lightgcn"}
        and len(parts) == expected
        and (len(parts) < 2 or parts[1] in ("original", *VARIANT_PROMPT))
        and (len(parts) < 3 or parts[2] in RUN_FUSIONS)
    )
    if not known:
        raise ConfigError(f"run '{run}': not a run name this pipeline produces")
    return {
        "model": model,
        "variant": parts[1] if len(parts) > 1 else None,
        "fusion": parts[2] if len(parts) > 2 else None,
    }


def main_run(cfg: dict[str, Any]) -> str:
    """The run that `results/{ds}/metrics.json` reports: the configured model and features."""
    return run_id(cfg["train"]["model"], visual_variant(cfg), cfg["train"]["fusion"])
