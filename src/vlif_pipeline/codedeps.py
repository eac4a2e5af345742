"""The source files a stage runs: the import closure of its module within the package.

Why computed: the rules declare a stage's sources as inputs (editing one reruns the stage and what
depends on it) and the trainer hashes them into its resume fingerprint; lists kept by hand missed
files that a stage imports through another module. Imports are read with ``ast``, without
importing anything (the Snakefile calls this for every rule), including imports inside functions;
those under ``if TYPE_CHECKING:`` are left out, as they never run. A module's closure includes the
``__init__.py`` of every package above it (Python runs them on import), the files a module of the
closure reads at run time (:data:`RUNTIME_FILES`: the C kernels' sources, the paper's published
figures), and the modules that another imports by name (:data:`DYNAMIC_IMPORTS`: the model
registry's).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from vlif_pipeline.__main__ import STAGES
from vlif_pipeline.registry import MODELS

PACKAGE = Path(__file__).resolve().parent
NAME = PACKAGE.name
RUNTIME_FILES = {  # files a module reads at run time, by the module: they rerun its stages too
    "models/native.py": ("models/kernels/*.c", "models/kernels/*.h"),  # compiled at first use
    "report/paper.py": ("report/published.yaml",),
}
DYNAMIC_IMPORTS = {  # modules that import others by name (importlib), and those others
    "vlif_pipeline.models": tuple(entry.module for entry in MODELS.values()),
}


def module_file(module: str) -> Path | None:
    """The file of ``vlif_pipeline.x.y`` (a module or a package's ``__init__.py``), None outside the package."""
    parts = module.split(".")
    if parts[0] != NAME:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [NAME, *relative.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(path: Path) -> set[str]:
    """Modules that ``path`` imports at run time (absolute names; ``from a import b`` gives ``a``
    and ``a.b``, as b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return names


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


@functools.cache
def closure(module: str) -> tuple[Path, ...]:
    """The package's files that running ``module`` may execute, sorted; see the module's docstring."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        for candidate in (name, *_parents(name)):
            path = module_file(candidate)
            if path is not None and path not in seen:
                seen.add(path)
                pending.extend(_imported(path))
                pending.extend(DYNAMIC_IMPORTS.get(candidate, ()))
    for module, patterns in RUNTIME_FILES.items():
        if PACKAGE / module in seen:
            seen.update(path for pattern in patterns for path in PACKAGE.glob(pattern))
    return tuple(sorted(seen))


def stage_sources(stage: str) -> tuple[Path, ...]:
    """The files ``python -m vlif_pipeline <stage>`` runs: the closure of the stage's module."""
    if stage not in STAGES:
        raise KeyError(f"no stage {stage!r}; known: {', '.join(STAGES)}")
    return closure(STAGES[stage][0])
