# hemoseg: two commands do everything on a fresh machine.
#   make demo   install, generate synthetic CT, train, evaluate, export, predict, report (CPU, minutes)
#   make test   install and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO   ?= demo
# When make began (:= reads the clock once, now): the demo's 10 minutes include the install.
START  := $(shell date +%s)

.PHONY: setup demo test browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch (installs from the local wheel cache when present); any torch >= 2.4 works.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the browser test (Debian packages). Best effort: without it that test skips with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "note: chromium not installed; browser tests will skip"; }

demo: setup
	$(BIN)/python scripts/demo.py --out $(DEMO) --started $(START)

test: setup browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
