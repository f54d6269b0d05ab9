# The README's commands. Everything a fresh machine needs (virtualenv, packages, Kafka jars) is set up
# by the targets themselves; the only prerequisites are Python 3.9+, Java 17+ and Maven.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATE_ARGS ?= --rate 50

.PHONY: run test test-fast bench kafka-up kafka-down generate clean setup docker-compose-tool

run: setup
	$(PY) -m local_kafka demo

test: setup docker-compose-tool
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) bench/benchmark.py

kafka-up: setup
	$(PY) -m local_kafka up

kafka-down: $(INSTALLED)
	$(PY) -m local_kafka down

generate: setup
	$(PY) -m local_kafka.generator $(GENERATE_ARGS)

clean: $(INSTALLED)
	$(PY) -m local_kafka down
	rm -rf .local/kafka

setup: $(INSTALLED)
	$(PY) -m local_kafka jars

$(INSTALLED): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

# The tests validate docker-compose.yml with docker-compose; install it where apt can (as root).
docker-compose-tool:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -qq docker-compose || { apt-get update -qq && apt-get install -y -qq docker-compose; }; } \
	  >/dev/null 2>&1; } || echo "docker-compose could not be installed: its check will be skipped"
