#!/usr/bin/env bash
# Install torch into the given Python environment before the project, so its `torch>=2.4` requirement is met.
# With a GPU: the default (CUDA) build from PyPI. Without one: the CPU build, which is ~200 MB instead of ~5 GB.
set -euo pipefail
python="${1:?usage: install_torch.sh PATH/TO/python}"
version="${TORCH_VERSION:-2.13.0}"
if "$python" -c "import torch" 2>/dev/null; then
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$python" -m pip install -q "torch==${version}"
elif "$python" -m pip install -q "torch==${version}+cpu" 2>/dev/null; then
    # A CPU build the configured indexes or find-links already hold (a wheelhouse, a mirror): no network wait.
    exit 0
else
    # The CPU index is tried alongside the configured ones; pip prefers the +cpu build where both exist.
    "$python" -m pip install -q --timeout 15 --retries 1 "torch==${version}" \
        --extra-index-url https://download.pytorch.org/whl/cpu
fi
