#!/usr/bin/env bash
# The tests (the README's second command): set up what is missing (scripts/setup_env.sh: the active virtual
# environment, else .venv/), then ruff and pytest on tests/ (CPU, tiny models; real-data tests read SQUAD_DIR,
# by default ../shared/data/squad2, and skip when it is absent). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh dev
python -m ruff check .
python -m pytest -q tests "$@"
