"""Configuration validation, per-dataset merging and run naming."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vlif_pipeline import config as cfgmod
from vlif_pipeline import sweep

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"


@pytest.fixture()
def shipped() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid(shipped: dict) -> None:
    cfgmod.validate(shipped, SCHEMA)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["datasets"]["baby"].update(format="amazon2099"), "datasets.baby.format: 'amazon2099' is not one of"),
        (lambda c: c.update(kcore=0), "kcore: 0 is less than the minimum of 1"),
        (lambda c: c["datasets"]["baby"].pop("meta"), "datasets.baby: 'meta' is required"),
        (lambda c: c["datasets"]["baby"].update(meta="no/such/meta.json.gz"), "datasets.baby.meta: local path 'no/such/meta.json.gz' does not exist"),
        (lambda c: c["vlm"].update(prompt="fancy"), "vlm.prompt: 'fancy' is not one of"),
        (lambda c: c["datasets"]["demo"]["train"].update(lerning_rate=0.1), "datasets.demo.train: unknown key(s) ('lerning_rate' was unexpected)"),
        (lambda c: c["datasets"].update(mm={"format": "mmrec", "path": "."}), "datasets.mm.meta: train.visual 'vlm' needs titles and images"),
        (lambda c: (c["datasets"]["baby"].pop("image_features"), c["datasets"]["baby"].update(train={"visual": "original"})),
         "datasets.baby.train.visual: 'original' needs"),
        (lambda c: c["datasets"].update(toy={"format": "synthetic"}), "datasets.toy: 'synthetic' is required"),
        (lambda c: c["datasets"].update(toy={"format": "synthetic", "synthetic": {"n_users": 50}}),
         "datasets.toy.synthetic: 'n_items' is required"),
        (lambda c: c["models"].update(vlif={"temprature": 0.1}), "models.vlif.temprature: unknown parameter of vlif"),
        (lambda c: c["models"].update(vlif={"n_heads": 2.5}), "models.vlif.n_heads: 2.5 is not a non-negative integer"),
        (lambda c: c["models"].update(vlif={"fusion": "sum"}), "models.vlif.fusion: 'sum' is not one of"),
        (lambda c: c["models"].update(vlif={"restrict": "yes"}), "models.vlif.restrict: 'yes' is not one of"),
        (lambda c: c["models"].update(popularity={"reg_weight": 0.1}), "models.popularity.reg_weight: unknown parameter of popularity (known: learning_rate"),
        (lambda c: c["datasets"]["demo"]["models"].update(vlif={"lambda": "high"}), "datasets.demo.models.vlif.lambda: 'high' is not a non-negative number"),
        (lambda c: c["models"].update(sasrec={}), "models: 'sasrec' is not one of"),
        (lambda c: c["train"].update(native="yes"), "train.native: 'yes' is not one of"),
        (lambda c: c["train"].update(reg_weight=0.1), "train: unknown key(s) ('reg_weight' was unexpected)"),
        (lambda c: c["sweep"].update(sasrec={"n_layers": [1]}), "sweep: 'sasrec' is not one of"),
        (lambda c: c["sweep"].update(lightgcn={"n_layer": [1, 2]}), "sweep.lightgcn.n_layer: not a setting a lightgcn grid can vary"),
        (lambda c: c["sweep"].update(vlif={"fusion": ["pid"]}), "sweep.vlif.fusion: not a setting a vlif grid can vary"),
        (lambda c: c["sweep"].update(lightgcn={"n_layers": [1, "two"]}), "sweep.lightgcn.n_layers: 'two' is not a non-negative integer"),
        (lambda c: c["sweep"].update(lightgcn={"n_layers": []}), "sweep.lightgcn.n_layers: [] should be non-empty"),
        (lambda c: c["sweep"].update(seeds=[1, 1]), "sweep.seeds: [1, 1] has non-unique elements"),
    ],
)
def test_bad_config_names_key_and_problem(shipped: dict, mutate, expected: str) -> None:
    bad = copy.deepcopy(shipped)
    mutate(bad)
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.validate(bad, SCHEMA)
    assert expected in str(err.value)


def test_dataset_overrides_merge_over_global_sections(shipped: dict) -> None:
    demo = cfgmod.dataset_config(shipped, "demo")
    baby = cfgmod.dataset_config(shipped, "baby")
    assert demo["vlm"]["model"] == cfgmod.TINY_VLM and demo["vlm"]["prompt"] == "title_cot"
    assert baby["vlm"]["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert demo["train"]["learning_rate"] == shipped["train"]["learning_rate"]
    assert demo["dataset"]["format"] == "synthetic" and "vlm" not in demo["dataset"]
    with pytest.raises(cfgmod.ConfigError, match="datasets.nope: no such dataset"):
        cfgmod.dataset_config(shipped, "nope")


def test_a_datasets_model_parameter_overrides_that_one_parameter(shipped: dict) -> None:
    """models.<model> merges key by key: the demo's lambda leaves the global VLIF settings in place."""
    shipped["models"]["vlif"] = {"temperature": 0.1, "lambda": 0.5}
    demo = cfgmod.dataset_config(shipped, "demo")
    assert demo["models"]["vlif"] == {"temperature": 0.1, "lambda": 0.001}
    assert cfgmod.dataset_config(shipped, "baby")["models"]["vlif"] == {"temperature": 0.1, "lambda": 0.5}


def test_a_run_gets_the_trainer_settings_and_its_own_models_parameters_only(shipped: dict) -> None:
    shipped["models"]["lightgcn"] = {"n_layers": 3}
    demo = cfgmod.dataset_config(shipped, "demo")
    vlif = cfgmod.train_params(demo, "vlif__vlm_title__concat")
    assert vlif == {"lambda": 0.001, "fusion": "concat", "max_epochs": 300, "patience": 10}, "what differs from defaults"
    assert cfgmod.train_params(demo, "lightgcn") == {"n_layers": 3, "max_epochs": 300, "patience": 10}
    shipped["seed"] = 7
    shipped["models"]["vlif"] = {"placement": "after", "lambda": 0.1, "learning_rate": 1e-4}  # defaults written out
    assert cfgmod.train_params(cfgmod.dataset_config(shipped, "baby"), "vlif__vlm_title__pid") == {
        "seed": 7, "learning_rate": 1e-4
    }
    assert "reg_weight" not in cfgmod.train_params(demo, "freedom__vlm_title"), "the registry's default applies"
    assert not {"model", "visual", "device", "gpus"} & set(cfgmod.train_params(demo, "bpr"))


def test_an_mmrec_dataset_needs_one_inter_file_or_a_name(shipped: dict, tmp_path: Path) -> None:
    (tmp_path / "a.inter").write_text("")
    (tmp_path / "b.inter").write_text("")
    shipped["datasets"]["mm"] = {"format": "mmrec", "path": str(tmp_path), "train": {"visual": "original"}}
    with pytest.raises(cfgmod.ConfigError, match=r"needs exactly one \*.inter file, or a name to pick one"):
        cfgmod.validate(shipped, SCHEMA)
    shipped["datasets"]["mm"]["name"] = "c"
    with pytest.raises(cfgmod.ConfigError, match="datasets.mm: name: no file"):
        cfgmod.validate(shipped, SCHEMA)
    shipped["datasets"]["mm"]["name"] = "b"
    cfgmod.validate(shipped, SCHEMA)
    assert cfgmod.mmrec_inter(shipped["datasets"]["mm"]) == tmp_path / "b.inter"


def test_run_ids_round_trip() -> None:
    for args in [
        ("vlif", "vlm_title", "pid", None), ("freedom", "original", None, None), ("lightgcn", None, None, None),
        ("vlif", "vlm_title", "pid", "lambda=0.01,seed=2"), ("bpr", None, None, "reg_weight=1e-05"),
    ]:
        name = cfgmod.run_id(*args)
        assert cfgmod.parse_run_id(name) == dict(zip(("model", "variant", "fusion", "point"), args))
    for bad in ("vlif__vlm_title", "bpr@", "bpr__original@x"):
        with pytest.raises(cfgmod.ConfigError):
            cfgmod.parse_run_id(bad)


def test_visual_variant_follows_prompt(shipped: dict) -> None:
    cfg = cfgmod.dataset_config(shipped, "baby")
    assert cfgmod.visual_variant(cfg) == "vlm_title"
    cfg["vlm"]["prompt"] = "plain"
    assert cfgmod.visual_variant(cfg) == "vlm_plain"
    cfg["train"]["visual"] = "original"
    assert cfgmod.visual_variant(cfg) == "original"
    assert cfgmod.slug("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen--Qwen2.5-VL-7B-Instruct"


def test_numbers_written_as_yaml_reads_them_are_numbers(shipped: dict) -> None:
    """YAML 1.1 reads 1e-3 (no dot) as a string; people write it that way all the time."""
    text = "train:\n  learning_rate: 1e-3\nmodels:\n  vlif: {temperature: 1E-1, n_heads: 8}\n"
    override = yaml.safe_load(text)
    assert override["train"]["learning_rate"] == "1e-3", "the YAML reading this test is about"
    shipped["train"]["learning_rate"] = override["train"]["learning_rate"]
    shipped["models"]["vlif"] = override["models"]["vlif"]
    shipped["datasets"]["demo"]["images"] = {"timeout": "2E1"}
    cfgmod.validate(shipped, SCHEMA)
    assert shipped["train"]["learning_rate"] == 0.001 and shipped["models"]["vlif"]["temperature"] == 0.1
    assert shipped["datasets"]["demo"]["images"]["timeout"] == 20.0
    shipped["train"]["learning_rate"] = "fast"
    with pytest.raises(cfgmod.ConfigError, match="train.learning_rate: 'fast' is not of type 'number'"):
        cfgmod.validate(shipped, SCHEMA)
    shipped["train"]["learning_rate"] = 1e-3
    shipped["train"]["batch_size"] = "2e3"
    cfgmod.validate(shipped, SCHEMA)
    assert shipped["train"]["batch_size"] == 2000 and isinstance(shipped["train"]["batch_size"], int)
    shipped["train"]["batch_size"] = "2.5e0"  # not an integer: still refused
    with pytest.raises(cfgmod.ConfigError, match="train.batch_size: 2.5 is not of type 'integer'"):
        cfgmod.validate(shipped, SCHEMA)


def test_a_grid_is_the_product_of_its_lists_and_each_run_names_its_point(shipped: dict) -> None:
    shipped["sweep"] = {"lightgcn": {"n_layers": [1, 2], "learning_rate": ["1e-3", 0.01]}, "seeds": [1, 2]}
    cfgmod.validate(shipped, SCHEMA)
    cfg = cfgmod.dataset_config(shipped, "demo")
    names = [sweep.name(s) for s in sweep.runs(cfg, "lightgcn")]
    assert names[:3] == [
        "n_layers=1,learning_rate=0.001,seed=1", "n_layers=1,learning_rate=0.001,seed=2",
        "n_layers=1,learning_rate=0.01,seed=1",
    ]
    assert len(names) == 8 and sweep.runs(cfg, "bpr") == []
    params = cfgmod.train_params(cfg, cfgmod.run_id("lightgcn", point=names[2]))
    assert (params["n_layers"], params["learning_rate"], params["seed"], params["max_epochs"]) == (1, 0.01, 1, 300)
    with pytest.raises(cfgmod.ConfigError, match="not a run of the configured sweep of lightgcn"):
        cfgmod.train_params(cfg, "lightgcn@n_layers=3,learning_rate=0.001,seed=1")


def test_adding_a_value_keeps_every_existing_runs_name_and_parameters(shipped: dict) -> None:
    shipped["sweep"] = {"vlif": {"lambda": [0.1, 0.01]}}
    before = cfgmod.dataset_config(shipped, "baby")
    shipped["sweep"]["vlif"]["lambda"].append(0.001)
    after = cfgmod.dataset_config(shipped, "baby")
    old = {sweep.name(s): cfgmod.train_params(before, f"vlif__vlm_title__pid@{sweep.name(s)}") for s in sweep.runs(before, "vlif")}
    new = {sweep.name(s): cfgmod.train_params(after, f"vlif__vlm_title__pid@{sweep.name(s)}") for s in sweep.runs(after, "vlif")}
    assert set(new) == set(old) | {"lambda=0.001"} and all(new[name] == old[name] for name in old)


def test_long_grid_points_get_short_names() -> None:
    settings = {f"setting_{k}": 0.000123 * k for k in range(12)}
    name = sweep.name(settings)
    assert len(name) == sweep.MAX_NAME and name.startswith("setting_0=0,setting_1=0.000123")
    assert name != sweep.name({**settings, "setting_11": 1.0})
