#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine, idempotently:
# Open MPI (apt, when mpiexec is missing and we may install), a virtual environment at .venv with
# torch, the project (editable) and its extras: mpi4py, diffusers for the latent encoder, tensorflow-cpu for the
# evaluator, test tools.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v mpiexec >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" != none ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Open MPI (apt)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
  else
    echo "setup: mpiexec not found and apt-get not usable; install Open MPI or MPICH for multi-process runs" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first: the pinned CPU build (a bare requirement could pull a multi-GB CUDA build).
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch"
  pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
extras="latent,eval,dev"
command -v mpiexec >/dev/null 2>&1 && extras="mpi,$extras"
echo "setup: installing the project with [$extras]"
pip install -q -e ".[$extras]"
.venv/bin/python -c "import guided_diffusion, torch; print('setup: ok, torch', torch.__version__)"
