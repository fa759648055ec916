#!/usr/bin/env bash
# Download the official SQuAD v1.1 and v2.0 train/dev files (needs network access) into
# ${SQUAD_DIR:-./data}. Files already there are kept; each file is checked to parse as SQuAD JSON.
#
# Usage: SQUAD_DIR=/path/to/squad bash scripts/download_squad.sh [1.1] [2.0]   (default: both versions)
set -euo pipefail
SQUAD_DIR=${SQUAD_DIR:-./data}
BASE_URL=https://rajpurkar.github.io/SQuAD-explorer/dataset
VERSIONS=("$@")
[[ ${#VERSIONS[@]} -gt 0 ]] || VERSIONS=(1.1 2.0)

fetch() {  # url destination
  if command -v curl >/dev/null 2>&1; then
    curl --fail --location --silent --show-error --retry 3 --output "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget --quiet --tries=3 --output-document="$2" "$1"
  else
    echo "error: neither curl nor wget is installed" >&2
    return 2
  fi
}

check_json() {  # file version: prints a summary; fails (one line on stderr) unless it is SQuAD JSON
  python - "$1" "$2" <<'PY'
import json
import sys

path, expected = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f)
    questions = sum(len(p["qas"]) for a in dataset["data"] for p in a["paragraphs"])
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"error: {path} is not SQuAD JSON ({type(e).__name__}: {e})")
if str(dataset.get("version", "")).lstrip("v") != expected:
    sys.exit(f"error: {path} has version {dataset.get('version')!r}, expected {expected}")
print(f"{path}: version {dataset['version']}, {len(dataset['data'])} articles, {questions} questions")
PY
}

mkdir -p "$SQUAD_DIR"
for version in "${VERSIONS[@]}"; do
  case $version in
    1.1 | v1.1) version=1.1 ;;
    2.0 | v2.0) version=2.0 ;;
    *) echo "error: unknown SQuAD version '$version' (use 1.1 and/or 2.0)" >&2; exit 2 ;;
  esac
  for split in train dev; do
    name=$split-v$version.json
    dest=$SQUAD_DIR/$name
    if [[ -s $dest ]]; then
      echo "exists, skipped: $dest"
    else
      echo "downloading $BASE_URL/$name"
      tmp=$(mktemp "$SQUAD_DIR/.$name.XXXXXX")
      trap 'rm -f "$tmp"' EXIT
      fetch "$BASE_URL/$name" "$tmp" || { echo "error: could not download $BASE_URL/$name" >&2; exit 1; }
      check_json "$tmp" "$version" >/dev/null
      chmod 644 "$tmp"
      mv "$tmp" "$dest"
      trap - EXIT
    fi
    check_json "$dest" "$version"
  done
done
