#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (the oldest Python the runtime and the agent support).
# Looks on PATH, then in pyenv's versions; when pyenv is there but has no 3.10, asks it to install one.
# Exits 1, saying so on stderr, when none can be found or installed.
set -uo pipefail
ok() { "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }
for cand in "${PYTHON310:-}" "$(command -v python3.10 2>/dev/null)"; do
  if [ -n "$cand" ] && ok "$cand"; then echo "$cand"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for cand in $(ls -d "$root"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V -r); do
    if ok "$cand"; then echo "$cand"; exit 0; fi
  done
  echo "python310.sh: no Python 3.10 in $root/versions; installing one with pyenv" >&2
  if pyenv install --skip-existing 3.10 >&2; then
    for cand in $(ls -d "$root"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V -r); do
      if ok "$cand"; then echo "$cand"; exit 0; fi
    done
  fi
fi
echo "python310.sh: no Python 3.10 found (PATH, pyenv); install one (pyenv install 3.10) or set PYTHON310" >&2
exit 1
