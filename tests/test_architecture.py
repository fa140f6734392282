"""The package shows the pipeline: a stage imports only from itself and earlier stages, and no
module imports another module's private (underscore) name."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prunekit"

# Earlier stages first. A module belongs to the first stage whose prefix matches its dotted path.
STAGES = [
    # utilities every stage may use: errors, tensors in nested inputs, files and run folders (a
    # folder named by its settings, to checkpoint and resume long work), drawing, the training loop
    ("core", ["errors", "nested", "modes", "table", "files", "rng", "runs", "plots", "selection", "hessian",
              "training", "data", "models", "cnn_models", "augment", "granularity"]),
    ("masks", ["masks", "axis_mask", "feature_norms"]),
    ("graph", ["graph"]),
    ("measure", ["accounting", "landscape"]),
    ("criteria", ["criteria", "reconstruct"]),
    ("groups", ["structured"]),
    ("surgery", ["compaction", "blocks", "surgery"]),
    ("allocate", ["allocate"]),
    ("prune", ["pruner", "prune"]),
    ("schedule", ["schedules", "regularizers", "slimming", "lottery"]),
    ("deploy", ["saving"]),
    ("report", ["report"]),
    ("workflows", ["recipe", "workflows", "experiments", "applications", "llm"]),
    ("interface", ["commands", "cli", "__init__", "__main__"]),
]


def stage_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"prunekit.{module} belongs to no stage: add it to STAGES in {__file__}")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(module: str, path: Path):
    """(imported prunekit module, imported names, line) for every import in the file, nested ones too."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("prunekit"):
                target = node.module.removeprefix("prunekit").lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            if node.module:
                yield target, names, node.lineno
                continue
            for name in names:  # "from . import x": a submodule x, or a name of the package's __init__
                folder = PACKAGE.joinpath(*filter(None, target.split(".")))
                if (folder / f"{name}.py").is_file() or (folder / name).is_dir():
                    yield ".".join(filter(None, [target, name])), [], node.lineno
                else:
                    yield target or "__init__", [name], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("prunekit."):
                    yield alias.name.removeprefix("prunekit."), [], node.lineno


def test_no_stage_imports_from_a_later_stage():
    backwards = []
    for module, path in modules():
        if module == "__init__":
            continue
        for target, _, line in imports(module, path):
            if target and stage_of(target) > stage_of(module):
                backwards.append(f"{path.relative_to(PACKAGE)}:{line} ({STAGES[stage_of(module)][0]}) imports "
                                 f"prunekit.{target} ({STAGES[stage_of(target)][0]})")
    assert not backwards, "\n".join(backwards)


def test_no_module_imports_a_private_name():
    private = [f"{path.relative_to(PACKAGE)}:{line} imports {name} from prunekit.{target}"
               for module, path in modules() for target, names, line in imports(module, path)
               for name in names if name.startswith("_") and name != "__version__"]
    assert not private, "\n".join(private)


def test_the_check_sees_a_backward_import(tmp_path):
    """The checker itself works: a core module importing the pruner is caught."""
    assert stage_of("training") < stage_of("pruner")
    fake = tmp_path / "training.py"
    fake.write_text("from .pruner import Pruner\nfrom .masks import _owner\n")
    found = list(imports("training", fake))
    assert ("pruner", ["Pruner"], 1) in found and ("masks", ["_owner"], 2) in found
