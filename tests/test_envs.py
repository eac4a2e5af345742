"""The conda environment files for `--sdm conda` (envs/cpu.yaml, envs/gpu.yaml).

Creating the environments needs conda and its channels, which this machine does not have; what
is checked here is what can go wrong silently: a file that does not parse, a stage import the
environment lacks, a pin that drifted from pyproject.toml, a torch build of the wrong kind, and
the editable install of the pipeline itself.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "vlif_pipeline"
ENVS = {"cpu": REPO / "envs" / "cpu.yaml", "gpu": REPO / "envs" / "gpu.yaml"}
ROOT_VAR = "VLIF_PIPELINE_ROOT"
EDITABLE = f"-e ${{{ROOT_VAR}}}"
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:==|>=|<=|~=|!=|>|<).*)?$")
# import name -> distribution, for modules not installed where the test runs
KNOWN = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "cv2": "opencv-python"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_requirements(env: dict) -> tuple[dict[str, str], list[str]]:
    """(distribution -> version specifier, option lines) of an environment's pip section."""
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "expected exactly one pip: section"
    reqs: dict[str, str] = {}
    options: list[str] = []
    for line in sections[0]:
        line = str(line).strip()
        if line.startswith("-"):
            options.append(line)
            continue
        match = REQUIREMENT.match(line)
        assert match, f"unparsable pip requirement {line!r}"
        name = normalize(match.group(1))
        assert name not in reqs, f"{name} listed twice"
        reqs[name] = (match.group(2) or "").replace(" ", "")
    return reqs, options


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for dep in project["dependencies"]:
        match = REQUIREMENT.match(dep.split(";")[0].strip())
        assert match, dep
        pins[normalize(match.group(1))] = (match.group(2) or "").replace(" ", "")
    return pins


def stage_imports() -> dict[str, set[str]]:
    """Third-party top-level modules imported anywhere in the package -> files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "vlif_pipeline" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def distribution_of(module: str) -> str:
    installed = importlib.metadata.packages_distributions().get(module)
    if installed:
        return normalize(installed[0])
    return normalize(KNOWN.get(module, module))


@pytest.fixture(scope="module", params=sorted(ENVS))
def env(request: pytest.FixtureRequest) -> tuple[str, dict]:
    path = ENVS[request.param]
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return request.param, data


def test_env_file_is_a_conda_environment(env: tuple[str, dict]) -> None:
    name, data = env
    assert data.get("name") == f"vlif-{name}"
    assert "conda-forge" in data["channels"]
    plain = [d for d in data["dependencies"] if isinstance(d, str)]
    python = [d for d in plain if re.match(r"^python\s*[=<>]", d)]
    assert python and python[0].replace(" ", "") == "python=3.11", python
    assert "pip" in plain


def test_env_python_satisfies_pyproject(env: tuple[str, dict]) -> None:
    _, data = env
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.match(r">=\s*([\d.]+)", requires).group(1).split("."))
    python = next(d for d in data["dependencies"] if isinstance(d, str) and d.startswith("python"))
    version = tuple(int(x) for x in python.split("=")[-1].split("."))
    assert version >= minimum, (python, requires)


def test_env_lists_every_third_party_import_of_the_stages(env: tuple[str, dict]) -> None:
    name, data = env
    reqs, _ = pip_requirements(data)
    imports = stage_imports()
    assert {"torch", "numpy", "polars"} <= set(imports), "the import scan found too little"
    missing = {
        module: sorted(files) for module, files in imports.items() if distribution_of(module) not in reqs
    }
    assert not missing, f"envs/{name}.yaml lacks the distributions of: {missing}"


def test_env_pins_match_pyproject(env: tuple[str, dict]) -> None:
    name, data = env
    reqs, _ = pip_requirements(data)
    pins = pyproject_pins()
    assert set(pins) <= set(reqs), f"envs/{name}.yaml lacks {sorted(set(pins) - set(reqs))}"
    for dist, spec in reqs.items():
        base = spec.split("+")[0]  # torch==2.13.0+cpu is the 2.13.0 release, CPU build
        if dist in pins:
            assert base == pins[dist], f"envs/{name}.yaml pins {dist}{spec}, pyproject.toml {dist}{pins[dist]}"
        else:  # an import pyproject.toml only gets transitively: pin it exactly
            assert spec.startswith("=="), f"envs/{name}.yaml: {dist} is not pinned ({spec!r})"


def test_torch_build_matches_the_environment(env: tuple[str, dict]) -> None:
    name, data = env
    reqs, options = pip_requirements(data)
    cpu_index = any("download.pytorch.org/whl/cpu" in option for option in options)
    if name == "cpu":
        assert reqs["torch"].endswith("+cpu") and cpu_index
    else:  # PyPI's Linux wheel is the CUDA build; a +cpu pin or the CPU index would defeat it
        assert "+cpu" not in reqs["torch"] and not cpu_index


def test_env_installs_the_pipeline_editable_from_the_repository(env: tuple[str, dict]) -> None:
    _, data = env
    _, options = pip_requirements(data)
    assert EDITABLE in options, f"expected the line '{EDITABLE}'"


def test_snakefile_tells_the_environments_where_the_repository_is() -> None:
    """The env files install `-e ${VLIF_PIPELINE_ROOT}`: the workflow must set it before conda runs."""
    sources = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    assert any(ROOT_VAR in p.read_text() for p in sources if p.exists()), (
        f"neither Snakefile nor rules/*.smk sets {ROOT_VAR} (os.environ.setdefault('{ROOT_VAR}', workflow.basedir))"
    )


def test_rules_name_only_existing_env_files() -> None:
    named = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        for match in re.finditer(r"""["']((?:\.\./)?envs/[\w.-]+\.ya?ml)["']""", path.read_text()):
            named.add(match.group(1))
    if not named:
        pytest.skip("no rule names a conda environment file yet")
    for rel in named:  # conda: paths in rules/*.smk are relative to rules/
        target = (REPO / "rules" / rel).resolve() if rel.startswith("..") else (REPO / rel)
        assert target.is_file(), f"rules name {rel}, which does not exist"
