#!/usr/bin/env bash
# Fetch the three SmolLM-Corpus subsets into cosmopedia-v2/, python-edu/ and fineweb-edu-dedup/
# beside this script. Extra arguments go to `smollm-corpus fetch`:
#   ./get_dataset.sh --limit 1000          # a small sample of each subset
#   ./get_dataset.sh --source /data/mirror # a local copy of the Hub repository
# Interrupted? Run it again: every subset resumes where it stopped.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "get_dataset.sh: Python 3.10 or newer is needed as python3; install it and run again" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "get_dataset.sh: cannot create $venv (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
fi
if ! "$venv/bin/python" -c 'import smollm_corpus' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$here" || { echo "get_dataset.sh: installing smollm-corpus failed" >&2; exit 1; }
fi

failed=()
for subset in cosmopedia-v2 python-edu fineweb-edu-dedup; do
  "$venv/bin/smollm-corpus" fetch "$subset" --out-dir "$here" "$@"
  status=$?
  if [ "$status" -eq 130 ]; then
    exit 130  # Ctrl-C: stop here; running the script again resumes
  elif [ "$status" -ne 0 ]; then
    failed+=("$subset")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "get_dataset.sh: failed: ${failed[*]}; fix the cause above and run again to resume" >&2
  exit 1
fi
