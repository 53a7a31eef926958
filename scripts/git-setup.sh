#!/usr/bin/env bash
# `make git-setup`: notebook-friendly git in this clone only (nothing global is changed).
#   - git diff / merge of *.ipynb by nbdime: cells, not JSON
#   - the clean filter of weeks/*.ipynb: keep only the outputs nbval compares (vitlib.notebooks strip)
#   - pre-commit with ruff on Python files and notebooks
# Usage: bash scripts/git-setup.sh [BIN]   (BIN: the folder with the environment's python; default .venv/bin)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -d "${1:-.venv/bin}" ] || { echo "error: no environment at ${1:-.venv/bin}: run 'make setup' first" >&2; exit 2; }
BIN="$(cd "${1:-.venv/bin}" && pwd)"
for tool in python git-nbdiffdriver git-nbmergedriver git-nbdifftool git-nbmergetool pre-commit; do
  [ -x "$BIN/$tool" ] || { echo "error: $BIN/$tool not found: run 'make setup' first" >&2; exit 2; }
done
q() { printf "'%s'" "$1"; }  # quote a path for git's shell

# nbdime's drivers, by absolute path: git runs them without the virtual environment on PATH
# (through vitlib: for weeks/, git diff shows the notebook as the strip filter will store it)
git config diff.jupyternotebook.command "$(q "$BIN/python") -m vitlib.notebooks git-diff"
git config merge.jupyternotebook.driver "$(q "$BIN/git-nbmergedriver") merge %O %A %B %L %P"
git config merge.jupyternotebook.name "jupyter notebook merge driver (nbdime)"
git config difftool.nbdime.cmd "$(q "$BIN/git-nbdifftool") diff \"\$LOCAL\" \"\$REMOTE\" \"\$BASE\""
git config mergetool.nbdime.cmd "$(q "$BIN/git-nbmergetool") merge \"\$BASE\" \"\$LOCAL\" \"\$REMOTE\" \"\$MERGED\""
git config mergetool.nbdime.trustExitCode true

# the strip filter named in .gitattributes (weeks/*.ipynb filter=vitlib-strip)
git config filter.vitlib-strip.clean "$(q "$BIN/python") -m vitlib.notebooks strip"
git config filter.vitlib-strip.smudge cat

"$BIN/pre-commit" install >/dev/null

echo "git-setup: nbdime diff/merge for notebooks, the weeks/ strip filter, and pre-commit (ruff) are on in $(pwd)"
