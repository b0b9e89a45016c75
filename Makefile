# `make train` and `make test` set up .venv first (idempotent), then run.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-mindspeed train test clean slurm-up slurm-down

setup: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $(STAMP)

# MindSpeed + Megatron-LM for hardware=ascend_rehearsal (MINDSPEED_SRC=, MEGATRON_LM_SRC=: a directory
# or .tar.gz each; default ../shared/third_party/). docs/npu.md, "Rehearse on CPU".
setup-mindspeed: setup
	tools/setup_mindspeed.sh $(VENV)

train: setup
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

# A real one-host SLURM cluster for tests/test_slurm.py (as root: installs Debian's packages, starts the daemons).
slurm-up:
	bash tests/slurm/cluster.sh up

slurm-down:
	bash tests/slurm/cluster.sh down

clean:
	rm -rf $(VENV) outputs multirun .cache
