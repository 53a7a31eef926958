# The two commands of the README's quick start, each doing all the set-up it needs:
#   make lab    create .venv if missing, install vitlib and its pinned dependencies, open JupyterLab on weeks/
#   make test   the same set-up, then the whole test suite
#   make lab-collab  the same JupyterLab with real-time collaboration on, for pairs (docs/pairing.md)
#   make git-setup   nbdime diffs, the weeks/ strip filter and pre-commit in this clone (docs/pairing.md)
#   make notebooks   regenerate the student notebooks weeks/ from solutions/
#   make grade WEEK=01_patching SUBMISSIONS=path/to/folder [OUT=grades]   grade a class
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vitlib-installed

.PHONY: setup lab lab-collab git-setup test notebooks grade clean

setup: $(STAMP)

# Re-install only when the dependencies change.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# JupyterLab listens on 127.0.0.1 only; collaboration (jupyter-collaboration) is off in `lab`, on in `lab-collab`.
# As root (a container, a devcontainer, Docker) JupyterLab refuses to start unless it is given --allow-root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
LAB := $(BIN)/jupyter lab --notebook-dir=weeks --ServerApp.ip=127.0.0.1 $(ALLOW_ROOT)
SAY_ROOT := $(if $(ALLOW_ROOT),@echo "make: running as root (a container?): JupyterLab is started with --allow-root")

lab: setup
	$(SAY_ROOT)
	$(LAB) --YDocExtension.disable_rtc=True

lab-collab: setup
	$(SAY_ROOT)
	$(LAB) --YDocExtension.disable_rtc=False

git-setup: setup
	bash scripts/git-setup.sh $(BIN)

test: setup
	$(BIN)/python -m pytest

notebooks: setup
	$(BIN)/python -m vitlib.notebooks generate

OUT ?= grades
grade: setup
	@test -n "$(WEEK)" -a -n "$(SUBMISSIONS)" || { echo "usage: make grade WEEK=01_patching SUBMISSIONS=folder [OUT=grades]"; exit 2; }
	$(BIN)/python -m vitlib.grade $(WEEK) $(SUBMISSIONS) --out $(OUT)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
