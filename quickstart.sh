#!/usr/bin/env bash
# The main job on the embedded digits: set up, train, guide, sample and judge (scripts/quickstart.py says how).
# Usage: bash quickstart.sh [--fast] [--steps N] [--out DIR] [--recipe adm|edm2] [--skip_setup]
#   --fast: a tiny budget, about 2 minutes; --steps N: train every network N steps instead of the budget's count
# The pipeline is scripts/quickstart.py (standard library only, so it runs before set-up and checks its flags
# first); it runs setup.sh, then every step with the project's .venv python. A rerun resumes.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/scripts/quickstart.py" "$@"
