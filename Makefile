# The README's commands. Everything a fresh machine needs (virtualenv, packages, Kafka jars) is set up
# by the targets themselves; the only prerequisites are Python 3.11 (the locks are for it), Java 17+ and Maven.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATE_ARGS ?= --rate 50

.PHONY: run test test-fast lint bench kafka-up kafka-up-secure kafka-down generate clean setup lock

run: setup
	$(PY) -m local_kafka demo

# Installs nothing outside the checkout: packages go to .venv, Kafka's jars to .local.
test: setup lint
	$(PY) -m pytest

lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The unit specification alone: seconds, no Java, no Maven, no brokers.
test-fast: $(INSTALLED)
	$(PY) -m pytest -m "not slow and not kafka"

bench: setup
	$(PY) -m bench.benchmark

kafka-up: setup
	$(PY) -m local_kafka up

# TLS, SCRAM users and ACLs; certificates and passwords are generated into .local/kafka/tls on first use.
kafka-up-secure: setup
	$(PY) -m local_kafka up --secure

kafka-down: $(INSTALLED)
	$(PY) -m local_kafka down

generate: setup
	$(PY) -m local_kafka.generator $(GENERATE_ARGS)

clean: $(INSTALLED)
	$(PY) -m local_kafka down
	rm -rf .local/kafka

setup: $(INSTALLED)
	$(PY) -m local_kafka jars

# Exactly the lock: every package, tests' and tools' too, at its version and checked against its
# hashes; nothing is resolved at install time. `make lock` writes the locks from requirements*.txt.
$(INSTALLED): requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-cache-dir --require-hashes --no-deps -r requirements-dev.lock
	touch $@

# After changing a pin in requirements*.txt: the image's lock (runtime, both engines) and the checkout's.
LOCK := $(PY) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: $(INSTALLED)
	$(PY) -m pip install --quiet --disable-pip-version-check pip-tools==7.6.2
	$(LOCK) --output-file requirements.lock requirements-confluent.txt
	$(LOCK) --output-file requirements-dev.lock requirements-confluent.txt requirements-dev.txt
