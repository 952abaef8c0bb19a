# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both (re)create .venv when it is missing or older than the pins, then run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export RAYGENRE_HOME ?= $(CURDIR)/.raygenre-home

.PHONY: demo test lint bench venv system-deps clean

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) (torch + ray are large: the first run takes a few minutes)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -c "import torch, torchaudio, ray; print('torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| ray', ray.__version__)"
	touch $(STAMP)

venv: $(STAMP) system-deps

# ffmpeg decodes what libsndfile cannot (M4A/AAC); kubectl renders k8s/. Installed from Debian when we may;
# otherwise say so.
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing ffmpeg (Debian)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
	      || echo "warning: could not install ffmpeg; M4A/AAC files will be reported as unreadable"; \
	  else echo "warning: ffmpeg not found; install it for M4A/AAC support (apt-get install ffmpeg)"; fi; }
	@# kubectl (>= 1.27: kustomize v5 built in) renders the k8s/ overlays for tests/test_k8s.py, which skips without
	@# it. The apt package `kubectl` comes from the Kubernetes (pkgs.k8s.io) or Google Cloud apt repository; Debian's
	@# own archive has none (bookworm's kubernetes-client is kubectl 1.20, whose kustomize cannot build k8s/).
	@command -v kubectl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing kubectl (apt)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null) \
	      || echo "warning: could not install kubectl (no apt source offers it: add pkgs.k8s.io); tests/test_k8s.py will skip the k8s/ overlays"; \
	  else echo "warning: kubectl not found; install it to render and test k8s/ (apt-get install kubectl, from pkgs.k8s.io)"; fi; }

demo: venv
	$(BIN)/raygenre demo

test: venv
	$(BIN)/ruff check raygenre tests bench jobs beetsplug
	$(BIN)/python -m pytest -q -ra

lint: venv
	$(BIN)/ruff check raygenre tests bench jobs beetsplug

bench: venv
	$(BIN)/python bench/featurize.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/label.py
	$(BIN)/python bench/decoder.py
	$(BIN)/python bench/cli_help.py

clean:
	rm -rf $(VENV) .raygenre-home .pytest_cache
