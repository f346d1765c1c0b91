"""The architecture, checked: imports point down the layers, and no ConfigDict reaches the core.

Layers, bottom to top (WORKSPACE-notes.md, "Architecture"). A module may import its own
package and any package of a lower layer, never a package of its own layer or above.
"""
from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("se_jax.config", "se_jax.parallel", "se_jax.io"),
    ("se_jax.models", "se_jax.data"),
    ("se_jax.generation",),
    ("se_jax.semantic", "se_jax.abstention", "se_jax.tuning"),
    ("se_jax.pipeline",),
    ("launch", "benchmarks", "tools"),
)
# A package may build on a sibling of its own layer only where listed (none today).
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
TOP_LEVEL_ALLOWED = {"se_jax/__init__.py"}


def package_of(module: str) -> str | None:
    """The layered package a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LAYER_OF:
            return ".".join(parts[:n])
    return None


def module_name(rel: str) -> str:
    """`se_jax/models/llama.py` -> `se_jax.models.llama` (a package's __init__: the package)."""
    parts = Path(rel).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted module) for every import, `from x import y` counted as x.y too."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def layer_violations(sources: dict[str, str]) -> list[str]:
    """Every import that points to a package of the importer's layer or above;
    `sources` maps a repository-relative path to its text."""
    bad = []
    for rel, text in sources.items():
        module = module_name(rel)
        own = package_of(module)
        if own is None:
            continue
        for line, target in imported_modules(ast.parse(text, rel), module,
                                             rel.endswith("__init__.py")):
            other = package_of(target)
            if other is not None and other != own and LAYER_OF[other] >= LAYER_OF[own] \
                    and not (bad and bad[-1].startswith(f"{rel}:{line}: ")):
                bad.append(f"{rel}:{line}: {module} ({own}, layer {LAYER_OF[own]}) imports "
                           f"{target} ({other}, layer {LAYER_OF[other]})")
    return bad


def python_sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text()
            for d in ("se_jax", "launch", "benchmarks", "tools")
            for p in sorted((REPO / d).rglob("*.py"))}


def test_every_import_points_down_the_layers():
    bad = layer_violations(python_sources())
    assert not bad, "\n".join(bad)


def test_the_layer_check_catches_upward_and_sideways_imports():
    """Planted violations are reported with file and line: a model importing the pipeline
    (up), semantic importing abstention (sideways, same layer); a lower import passes."""
    rel = "se_jax/models/llama.py"
    text = (REPO / rel).read_text()
    planted = {rel: text + "\nfrom se_jax.pipeline import experiment\n",
               "se_jax/semantic/clustering.py": "import se_jax.abstention.labels\n",
               "se_jax/tuning/lora.py": "from se_jax.models import llama\n"}
    bad = layer_violations(planted)
    assert len(bad) == 2, bad
    assert bad[0].startswith(f"{rel}:{text.count(chr(10)) + 2}: ") and "se_jax.pipeline" in bad[0]
    assert bad[1].startswith("se_jax/semantic/clustering.py:1: ")


def test_every_module_sits_in_a_layered_package():
    flat = sorted(str(p.relative_to(REPO)) for p in (REPO / "se_jax").glob("*.py"))
    assert set(flat) <= TOP_LEVEL_ALLOWED, flat
    packages = {p.name for p in (REPO / "se_jax").iterdir() if (p / "__init__.py").exists()}
    assert {f"se_jax.{p}" for p in packages} == {p for p in LAYER_OF if p.startswith("se_jax")}


def test_no_import_inside_a_function_dodges_a_cycle():
    """se_jax imports se_jax at module top; a function-local import of our own code only
    hides a cycle (lazy imports stay for heavy optional libraries, each with its reason)."""
    local = []
    for path in (REPO / "se_jax").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n.startswith("se_jax") for n in names):
                    local.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not local, local
