#!/usr/bin/env bash
# Ahead-of-time compile the Pallas selective-scan kernels for an H100 on a
# machine without a GPU (research/jaxstack.md §2b).
#
# Creates .venv-cuda in the repo root (git-ignored, ~5.5 GB) with jax[cuda12]
# pinned to the jax version of the main venv, then runs aot_compile_h100.py
# with JAX_PLATFORMS=cpu so the CUDA plugin registers without a device.
#
# Usage: launch/aot_compile_h100.sh [extra args for aot_compile_h100.py]
# Env:   PYTHON (interpreter for the new venv, default python3)
#        JAX_VERSION (default: the version installed in .venv, else 0.10.2)
#        H100_TARGET_CONFIG (target-config txtpb, see aot_compile_h100.py)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-cuda"

if [[ -z "${JAX_VERSION:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then
    JAX_VERSION="$("$ROOT/.venv/bin/python" -c 'import jax; print(jax.__version__)')"
  else
    JAX_VERSION="0.10.2"
  fi
fi

have_version="$("$VENV/bin/python" -c 'import jax; print(jax.__version__)' 2>/dev/null || true)"
if [[ "$have_version" != "$JAX_VERSION" ]] || ! "$VENV/bin/python" -c 'import jax_cuda12_plugin' 2>/dev/null; then
  echo "creating $VENV with jax[cuda12]==$JAX_VERSION" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # absl-py/flatbuffers are undeclared runtime deps of jax's GPU paths (§0).
  "$VENV/bin/pip" install -q "jax[cuda12]==$JAX_VERSION" absl-py flatbuffers numpy
  # Only the kernels are needed: skip the project's heavy dependencies.
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
fi

# JAX_PLATFORMS=cpu: without it the CUDA plugin aborts on cuInit (no GPU) and
# the cuda topology is unavailable.
JAX_PLATFORMS=cpu exec "$VENV/bin/python" "$ROOT/launch/aot_compile_h100.py" "$@"
