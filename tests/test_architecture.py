"""The architecture, checked: imports point down the layers, and no ConfigDict reaches the core.

Layers, bottom to top (WORKSPACE-notes.md, "Architecture"). A module may import its own
package and any package of a lower layer, never a package of its own layer or above.
"""
from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("se_jax.config",),
    ("se_jax.parallel", "se_jax.io"),
    ("se_jax.models", "se_jax.data"),
    ("se_jax.generation",),
    ("se_jax.semantic", "se_jax.abstention", "se_jax.tuning"),
    ("se_jax.pipeline",),
    ("tools",),                      # helper scripts the benchmarks and tests import
    ("launch", "benchmarks"),
)
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


CORE = ("se_jax/config", "se_jax/parallel", "se_jax/io", "se_jax/models", "se_jax/data",
        "se_jax/generation", "se_jax/semantic", "se_jax/abstention", "se_jax/tuning",
        "se_jax/pipeline")
SECTION_TYPES = {"RunConfig", "ModelConfig", "MeshConfig", "PromptConfig", "SamplingConfig",
                 "EntropyConfig", "LabelsConfig", "TrainingConfig", "LoraConfig",
                 "DistillConfig", "DataConfig", "FactsConfig", "TeachConfig",
                 "EvaluationConfig", "ExperimentConfig"}


def untyped_config_parameters(sources: dict[str, str]) -> list[str]:
    """Parameters that carry run configuration (named config, cfg or *_config, or a
    section's name) without a typed section as their annotation: where a ConfigDict could
    reach the code. Annotations of other config types (LlamaConfig, a loss config) pass."""
    bad = []
    for rel, text in sources.items():
        for fn in ast.walk(ast.parse(text, rel)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for arg in fn.args.args + fn.args.kwonlyargs:
                if not (arg.arg in ("config", "cfg") or arg.arg.endswith("_config")):
                    continue
                note = ast.unparse(arg.annotation) if arg.annotation else ""
                names = set(note.replace("schema.", "").replace("|", " ").split())
                if not note or note == "Any" or "ConfigDict" in note or not (
                        names & SECTION_TYPES or note.endswith("Config")):
                    bad.append(f"{rel}:{fn.lineno}: {fn.name}({arg.arg}: {note or '?'})")
    return bad


# The edge: where a ConfigDict becomes a RunConfig.
EDGE = (("se_jax/config/schema.py", "from_configdict"), ("se_jax/pipeline/cli.py", "stage_config"))


def test_no_configdict_reaches_the_core():
    sources = {rel: text for rel, text in python_sources().items() if rel.startswith(CORE)}
    bad = [b for b in untyped_config_parameters(sources)
           if not any(b.startswith(f"{rel}:") and f": {fn}(" in b for rel, fn in EDGE)]
    assert not bad, "\n".join(bad)


def test_the_config_check_catches_an_untyped_parameter():
    planted = {"se_jax/tuning/x.py": "def train(model, cfg: Any): ...\n"
                                     "def ok(cfg: TrainingConfig, llama_config: LlamaConfig): ...\n"
                                     "def bare(config): ...\n"}
    assert untyped_config_parameters(planted) == [
        "se_jax/tuning/x.py:1: train(cfg: Any)", "se_jax/tuning/x.py:3: bare(config: ?)"]
