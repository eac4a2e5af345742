"""The one place where configuration is validated, merged per dataset and turned into names.

The Snakefile calls `validate` before any job starts, so a bad value stops the run with a message
naming the key and the problem; rules then read every stage parameter through `dataset_config`,
which applies a dataset's own overrides over the global sections.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from vlif_pipeline import sweep
from vlif_pipeline.registry import FUSIONS, MODELS, PARAM_CHOICES, TRAINER_DEFAULTS, VARIANTS, caption_variant

STAGE_SECTIONS = (
    "seed", "kcore", "split", "missing_meta", "ingest", "images", "vlm", "text_encoder",
    "captions", "graphs", "train", "models", "sweep", "recommend", "report",
)
RUN_KEYS = ("model", "visual", "fusion")  # the train section's choice of the main run
RESOURCE_KEYS = ("device", "gpus")  # the train section's keys for where a run goes, not what it computes
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


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _as_number(value: Any) -> int | float | None:
    """``value`` as the number a person meant, or None: YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    if not isinstance(value, str) or not _NUMBER.match(value.strip()):
        return None
    number = float(value)
    return int(number) if number.is_integer() and not any(c in value for c in ".eE") else number


def _set_at(config: dict[str, Any], path: Any, value: Any) -> None:
    *parents, last = list(path)
    node: Any = config
    for key in parents:
        node = node[key]
    node[last] = value


def _numbers_as_written(config: dict[str, Any], validator: jsonschema.Draft202012Validator) -> None:
    """Turn numbers written as YAML strings into numbers in place, where the schema expects a number
    (or, in a ``models`` section, where the parameter's default is one); other strings stay strings,
    so a misspelt value is still refused with its key's name."""
    while True:
        changed = False
        for err in validator.iter_errors(config):
            expected = err.validator_value if err.validator == "type" else None
            wanted = expected if isinstance(expected, list) else [expected]
            if ("number" in wanted or "integer" in wanted) and (number := _as_number(err.instance)) is not None:
                integral = "number" not in wanted and float(number).is_integer()
                _set_at(config, err.absolute_path, int(number) if integral else number)
                changed = True
        if not changed:
            break
    for _, model, params in _model_entries(config):
        for key, value in params.items():
            params[key] = _as_default_kind(value, model_settings(model).get(key))
    for _, model, grid in _model_entries(config, "sweep"):
        for key, values in grid.items():
            if isinstance(values, list):
                grid[key] = [_as_default_kind(value, sweepable(model).get(key)) for value in values]


def _as_default_kind(value: Any, default: Any) -> Any:
    """A string written as a number becomes that number where ``default`` is a number."""
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        number = _as_number(value)
        return value if number is None else number
    return value


def _model_entries(config: dict[str, Any], section: str = "models") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, model, mapping) of every registered model's entry in a per-model ``section``
    (``models`` or ``sweep``), the global one and each dataset's; entries the schema refuses
    (unknown models, non-mappings) are left to its messages."""
    sections = [(section, config.get(section))]
    sections += [
        (f"datasets.{name}.{section}", entry.get(section))
        for name, entry in (config.get("datasets") or {}).items()
        if isinstance(entry, dict)
    ]
    for where, mapping in sections:
        for model, entry in mapping.items() if isinstance(mapping, dict) else ():
            if model in MODELS and isinstance(entry, dict):
                yield where, model, entry


def validate(config: dict[str, Any], schema_file: str | Path, workdir: str | Path = ".") -> None:
    """Check `config` against the JSON schema and that every local input path exists.

    Numbers written as YAML strings (``1e-3``) are first turned into numbers in place. Raises
    `ConfigError` listing every problem, one line each, as `key: problem`.
    """
    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    _numbers_as_written(config, validator)
    problems = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{_key_path(err.absolute_path)}: {_describe(err)}")
    problems += _model_problems(config) + _sweep_problems(config)
    for name, entry in (config.get("datasets") or {}).items():
        if not isinstance(entry, dict):
            continue
        for key in LOCATION_KEYS:
            location = entry.get(key)
            if isinstance(location, str) and not is_url(location) and not (Path(workdir) / location).exists():
                problems.append(f"datasets.{name}.{key}: local path '{location}' does not exist")
        if entry.get("format") == "mmrec" and isinstance(entry.get("path"), str):
            try:
                mmrec_inter(entry, workdir)
            except ConfigError as err:
                problems.append(f"datasets.{name}: {err}")
        train = {**config.get("train", {}), **entry.get("train", {})}
        if entry.get("format") == "mmrec" and train.get("visual") == "vlm" and "meta" not in entry:
            problems.append(
                f"datasets.{name}.meta: train.visual 'vlm' needs titles and images, which an MMRec folder "
                f"does not have: set datasets.{name}.meta to the raw meta dump its import joins on asin, "
                "or train.visual to 'original'"
            )
        needs_cnn_features = train.get("visual") == "original" and "image_features" not in entry
        if entry.get("format") in AMAZON_FORMATS and needs_cnn_features:
            problems.append(
                f"datasets.{name}.train.visual: 'original' needs the dataset's CNN features; "
                f"set datasets.{name}.image_features or use 'vlm'"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def mmrec_inter(entry: dict[str, Any], workdir: str | Path = ".") -> Path:
    """An MMRec dataset's ``<name>.inter``: the entry's ``name``, or its folder's only ``*.inter``."""
    folder = Path(entry["path"])
    if not (Path(workdir) / folder).is_dir():
        raise ConfigError(f"path '{folder}' is not a folder")
    if "name" in entry:
        inter = folder / f"{entry['name']}.inter"
        if not (Path(workdir) / inter).is_file():
            raise ConfigError(f"name: no file {inter}")
        return inter
    found = sorted(path.name for path in (Path(workdir) / folder).glob("*.inter"))
    if len(found) != 1:
        raise ConfigError(f"path: {folder} needs exactly one *.inter file, or a name to pick one (found {found})")
    return folder / found[0]


def _model_problems(config: dict[str, Any]) -> list[str]:
    """Problems of the ``models`` sections: unknown parameters, values of the wrong kind.

    Checked here, not in the schema, so that each model's parameters are listed once: in the
    registry, whose defaults also give each parameter's kind (an integer default takes integers,
    a float one any number, a choice one of ``PARAM_CHOICES``).
    """
    problems = []
    for where, model, params in _model_entries(config):
        defaults = model_settings(model)
        for key, value in params.items():
            if key not in defaults:
                known = ", ".join(defaults) or "none"
                problems.append(f"{where}.{model}.{key}: unknown parameter of {model} (known: {known})")
            elif (why := _kind_problem(key, value, defaults[key])) is not None:
                problems.append(f"{where}.{model}.{key}: {why}")
    return problems


def model_settings(model: str) -> dict[str, Any]:
    """What ``models.<model>`` may set, with the defaults: the model's parameters, and the trainer's
    settings for that model's runs alone (the released VLIF code trains at its own learning rate)."""
    return {**MODELS[model].defaults, **TRAINER_DEFAULTS}


def sweepable(model: str) -> dict[str, Any]:
    """Settings a grid of ``model`` may vary, with their defaults: the model's settings but its
    fusion (a run's fusion is its ablation row) and the seed (``sweep.seeds`` repeats points)."""
    return {key: value for key, value in model_settings(model).items() if key not in ("fusion", "seed")}


def _sweep_problems(config: dict[str, Any]) -> list[str]:
    """Unknown settings in a grid, and values of the wrong kind (each value checked like a model parameter)."""
    problems = []
    for where, model, grid in _model_entries(config, "sweep"):
        known = sweepable(model)
        for key, values in grid.items():
            if key not in known:
                problems.append(f"{where}.{model}.{key}: not a setting a {model} grid can vary (known: {', '.join(known)})")
                continue
            for value in values if isinstance(values, list) else ():
                if (why := _kind_problem(key, value, known[key])) is not None:
                    problems.append(f"{where}.{model}.{key}: {why}")
    return problems


def _kind_problem(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand where ``default`` does, or None."""
    if key in PARAM_CHOICES:
        return None if value in PARAM_CHOICES[key] else f"{value!r} is not one of {PARAM_CHOICES[key]}"
    if isinstance(default, bool) or isinstance(value, bool):
        return None if isinstance(value, bool) and isinstance(default, bool) else f"{value!r} is not {type(default).__name__}"
    if isinstance(default, int) and not (isinstance(value, int) and value >= 0):
        return f"{value!r} is not a non-negative integer"
    if isinstance(default, float) and not (isinstance(value, (int, float)) and value >= 0):
        return f"{value!r} is not a non-negative number"
    return None


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
    merged = {key: _merged(config.get(key), entry[key]) if key in entry else copy.deepcopy(config.get(key))
              for key in STAGE_SECTIONS}
    own = {key: value for key, value in entry.items() if key not in STAGE_SECTIONS}
    merged["dataset"] = {"published": ds, "meta_format": "amazon2014", **own}
    return merged


def _merged(base: Any, override: Any) -> Any:
    """``override`` over ``base``, mappings merged key by key at every depth (``models.vlif.lambda``
    overrides one parameter, not the model's whole mapping)."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    return {**copy.deepcopy(base), **{key: _merged(base.get(key), value) for key, value in override.items()}}


def slug(text: str) -> str:
    """A file-name-safe form of a model id: `Qwen/Qwen2.5-VL-7B-Instruct` -> `Qwen--Qwen2.5-VL-7B-Instruct`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-")


def visual_variant(cfg: dict[str, Any]) -> str:
    """The visual feature file a run uses: original CNN features, or captions of `vlm.prompt`."""
    if cfg["train"]["visual"] == "original":
        return "original"
    return caption_variant(cfg["vlm"]["prompt"])


def run_id(model: str, variant: str | None = None, fusion: str | None = None, point: str | None = None) -> str:
    """Name of a training run folder: `vlif__vlm_title__pid`, `freedom__original`, `lightgcn`, and
    for a run of a sweep its settings after an `@` (`lightgcn@n_layers=2,seed=1`, see sweep.py)."""
    if model == "vlif":
        base = f"vlif__{variant}__{fusion}"
    elif MODELS[model].uses_features:
        base = f"{model}__{variant}"
    else:
        base = model
    return base if point is None else f"{base}@{point}"


def parse_run_id(run: str) -> dict[str, str | None]:
    """Inverse of `run_id`; raises `ConfigError` for a name the pipeline would never produce."""
    base, _, point = run.partition("@")
    parts = base.split("__")
    model = parts[0]
    known = model in MODELS and len(parts) == (3 if model == "vlif" else 2 if MODELS[model].uses_features else 1)
    if not known or (len(parts) > 1 and parts[1] not in VARIANTS) or (len(parts) > 2 and parts[2] not in FUSIONS):
        raise ConfigError(f"run '{run}': not a run name this pipeline produces")
    if "@" in run and not point:
        raise ConfigError(f"run '{run}': no sweep point after '@'")
    return {
        "model": model,
        "variant": parts[1] if len(parts) > 1 else None,
        "fusion": parts[2] if len(parts) > 2 else None,
        "point": point or None,
    }


def main_run(cfg: dict[str, Any]) -> str:
    """The run that `results/{ds}/metrics.json` reports: the configured model and features."""
    return run_id(cfg["train"]["model"], visual_variant(cfg), cfg["train"]["fusion"])


def item_graph_weight(cfg: dict[str, Any], model: str) -> float:
    """The image similarities' share in the item kNN graph that ``model``'s runs use: a model's own
    ``image_weight`` where it has one (FREEDOM's is MMRec's 0.1), else ``graphs.visual_weight``."""
    if "image_weight" in MODELS[model].defaults:
        own = {**MODELS[model].defaults, **(cfg.get("models") or {}).get(model, {})}
        return float(own["image_weight"])
    return float(cfg["graphs"]["visual_weight"])


def train_params(cfg: dict[str, Any], run: str) -> dict[str, Any]:
    """Everything that decides what run `run` computes, for the trainer: the trainer settings of the
    train section and the seed, the model's own settings (`models.<model>`, which may also set
    trainer settings for its runs alone) and the run's fusion.

    Only these reach a run, and only where they differ from the registry's defaults, so changing
    another model's parameter reruns nothing of this one, nor does writing a default out. A
    run of a sweep (`@point`) takes its grid point's settings (and seed) over them.
    """
    parts = parse_run_id(run)
    model = str(parts["model"])
    trainer = {key: value for key, value in cfg["train"].items() if key in TRAINER_DEFAULTS}
    params = {**trainer, "seed": cfg["seed"], **(cfg.get("models") or {}).get(model, {})}
    if parts["point"] is not None:
        settings = sweep.settings_of(cfg, model, parts["point"])
        if settings is None:
            raise ConfigError(f"run '{run}': '{parts['point']}' is not a run of the configured sweep of {model}")
        params.update(settings)
    if parts["fusion"] is not None:
        params["fusion"] = parts["fusion"]
    defaults = model_settings(model)
    # only what differs from the defaults: writing a default out (as a preset does) reruns nothing
    return {key: value for key, value in params.items() if not _same(value, defaults.get(key, _ABSENT))}


_ABSENT = object()


def _same(value: Any, default: Any) -> bool:
    return type(value) is type(default) and value == default
