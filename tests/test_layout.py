"""The package's folders are its architecture: each folder imports only from the folders it may use."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "caffecam"
TOP = {"errors", "atomic", "textfile", "allocator", "proto"}  # usable from everywhere
# folder -> folders (besides TOP and itself) it may import from
ALLOWED = {
    "proto": set(),
    "engine": set(),
    "data": {"engine"},
    "train": {"engine", "data"},
    "cam": {"engine", "data"},
    "nets": set(),
    "bench": {"engine", "data", "train", "cam", "nets"},
}


def imported_folders(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "caffecam":
            parts = node.module.split(".")
            if len(parts) > 1:
                yield node.lineno, parts[1]
            else:
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "caffecam" and len(parts) > 1:
                    yield node.lineno, parts[1]


def test_every_module_sits_in_a_known_folder():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(ALLOWED)
    loose = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert loose == TOP - {"proto"}


def test_imports_point_one_way():
    wrong = []
    for folder, allowed in ALLOWED.items():
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "caffe_pb2.py":
                continue
            for line, target in imported_folders(path):
                if target not in TOP | allowed | {folder}:
                    wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports caffecam.{target}")
    for path in ROOT.glob("*.py"):
        for line, target in imported_folders(path):
            if target not in TOP:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports caffecam.{target}")
    assert not wrong, "\n".join(wrong)


def test_the_kernels_are_pure_tensor_code():
    """A kernel may use another kernel (the compiled CPU loops), nothing else of the package."""
    for path in (ROOT / "engine" / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.startswith("caffecam") or name.startswith("caffecam.engine.kernels"), (path, name)


def test_every_folder_says_what_it_may_import():
    for folder in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text()))
        assert doc and ("import" in doc.lower()), folder
