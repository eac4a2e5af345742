"""Each named choice is defined once (vlif_pipeline/registry.py); every other list of it must agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlif_pipeline import registry
from vlif_pipeline.config import RESOURCE_KEYS, RUN_KEYS
from vlif_pipeline.models import model_class
from vlif_pipeline.vision import prompts

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())
DEFS = SCHEMA["$defs"]


@pytest.mark.parametrize(
    ("enum", "names"),
    [
        (DEFS["train"]["properties"]["model"]["enum"], registry.MODELS),
        (DEFS["report"]["properties"]["baselines"]["items"]["enum"], [m for m in registry.MODELS if m != "vlif"]),
        (DEFS["models"]["propertyNames"]["enum"], registry.MODELS),
        (DEFS["train"]["properties"]["fusion"]["enum"], registry.FUSIONS),
        (DEFS["vlm"]["properties"]["prompt"]["enum"], registry.PROMPTS),
        (DEFS["train"]["properties"]["native"]["enum"], registry.PARAM_CHOICES["native"]),
    ],
)
def test_the_schemas_enums_are_the_registrys(enum: list[object], names: object) -> None:
    assert sorted(map(str, enum)) == sorted(map(str, names))  # type: ignore[call-overload]


def test_every_trainer_setting_is_a_train_key_and_nothing_else_is() -> None:
    """The seed is the top-level `seed`; the rest of `train` picks the main run and its resources."""
    keys = set(DEFS["train"]["properties"])
    assert keys == set(registry.TRAINER_DEFAULTS) - {"seed"} | set(RUN_KEYS) | set(RESOURCE_KEYS)


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_each_model_class_takes_its_defaults_from_the_registry(name: str) -> None:
    assert model_class(name).DEFAULTS is registry.MODELS[name].defaults


def test_the_caption_prompts_are_the_registrys() -> None:
    assert tuple(prompts.PROMPTS) == registry.PROMPTS
    assert {variant.prompt for variant in registry.VARIANTS.values()} - {None} == set(registry.PROMPTS)
    assert all(registry.VARIANTS[registry.caption_variant(p)].prompt == p for p in registry.PROMPTS)


def test_choice_parameters_default_to_one_of_their_choices() -> None:
    for model in registry.MODELS.values():
        for key, default in model.defaults.items():
            if key in registry.PARAM_CHOICES:
                assert default in registry.PARAM_CHOICES[key], (model.cls, key)
