# Mailfleet: `make demo` and `make test` set up everything they need on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Debian packages the tests and benchmarks use as real peers.
APT_PACKAGES := swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl bind9 bind9-utils dnsutils isync fetchmail postfix dovecot-imapd \
  clamav clamav-daemon clamav-milter spamassassin spamd spamc spamass-milter rspamd python3-milter opendkim opendkim-tools \
  rbldnsd opendmarc unbound sieve-connect dovecot-managesieved dovecot-sieve \
  chromium prometheus
MOLECULE_APT_PACKAGES := docker.io mmdebstrap

.PHONY: help venv apt test pytest lint collection molecule image demo demo-down bench bench-scan bench-auth bench-dkim bench-login bench-web clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

apt: ## Install the Debian packages the tests need (skipped when all are present)
	@missing=""; for p in $(APT_PACKAGES) $(MOLECULE_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@# Postfix is here for its smtp-sink/smtp-source tools and the benchmark's private instance: the system
	@# instance must not hold port 25, where the tests run their own MX peers.
	@postfix stop >/dev/null 2>&1 || true
	@# Likewise Dovecot is a reference peer that the tests start with their own config, never the system one.
	@service dovecot stop >/dev/null 2>&1 || true

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## Create the virtualenv with the package and test tools

lint: venv ## ruff over the package and the tests, mypy over the package
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/mypy

pytest: apt venv ## Run the pytest suite (real servers on loopback)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

collection: venv ## Build the Ansible collection mailfleet.fleet (roles, playbook, plugins) into build/collection/
	rm -f build/collection/mailfleet-fleet-*.tar.gz
	$(VENV)/bin/ansible-galaxy collection build --force --output-path build/collection .

image: apt venv ## Build the systemd container image from Debian packages (skipped when it exists)
	molecule/scripts/build-image.sh

molecule: apt venv ## Build and install the collection, then run every scenario in molecule/scenarios.txt (real mail)
	molecule/scripts/run-scenarios.sh

demo: apt venv ## Bring up the full fleet in containers with the installed collection, send mail, say where it went
	molecule/scripts/demo.sh up

demo-down: ## Remove the demo fleet's containers and network
	molecule/scripts/demo.sh down

test: pytest molecule ## Everything: pytest, then every Molecule scenario
	@echo "make test: all green"

bench: venv ## Mailfleet vs Postfix: msg/s (local Maildir, relay to smtp-sink) and idle-session memory; root
	@dpkg-query -W -f='$${Status}' postfix 2>/dev/null | grep -q "install ok installed" || { \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q postfix; }
	@postfix stop >/dev/null 2>&1 || true  # the system instance stays off; the benchmark runs its own
	$(PY) bench/smtp_throughput.py $(BENCH_ARGS)

BENCH_SCAN_PACKAGES := postfix clamav-daemon clamav-milter spamassassin spamd spamc spamass-milter
# The Debian packages a benchmark needs, installed when one is missing: $(call bench_packages,LIST)
define bench_packages
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi
endef

bench-scan: venv ## Mailfleet vs Postfix+milters scanning with one clamd and spamd: msg/s, p50/p99 to 250; root
	$(call bench_packages,$(BENCH_SCAN_PACKAGES))
	@postfix stop >/dev/null 2>&1 || true  # the system instance stays off; the benchmark runs its own
	$(PY) bench/scan_throughput.py $(BENCH_ARGS)

BENCH_AUTH_PACKAGES := postfix rbldnsd bind9 opendkim opendkim-tools opendmarc
bench-auth: venv ## Mailfleet vs Postfix+postscreen+OpenDKIM+OpenDMARC: msg/s, CPU ms/msg with and without; root
	$(call bench_packages,$(BENCH_AUTH_PACKAGES))
	@postfix stop >/dev/null 2>&1 || true  # the system instance stays off; the benchmark runs its own
	$(PY) bench/auth_throughput.py $(BENCH_ARGS)

BENCH_DKIM_PACKAGES := postfix bind9 opendkim opendkim-tools
bench-dkim: venv ## Mailfleet vs Postfix+OpenDKIM signing rsa-sha256 + ed25519: msg/s, p50/p99, CPU ms/msg; root
	$(call bench_packages,$(BENCH_DKIM_PACKAGES))
	@postfix stop >/dev/null 2>&1 || true  # the system instance stays off; the benchmark runs its own
	$(PY) bench/dkim_throughput.py $(BENCH_ARGS)

BENCH_LOGIN_PACKAGES := dovecot-imapd
bench-login: venv ## 10 IMAP clients logging in: Mailfleet login cache off/on vs Dovecot auth_cache off/on; root
	$(call bench_packages,$(BENCH_LOGIN_PACKAGES))
	$(PY) bench/login_bench.py $(BENCH_ARGS)

bench-web: venv ## Console and API p50/p95/p99 with 10k users and 10k queued messages, 10 clients; the CLI beside
	$(PY) bench/web_bench.py $(BENCH_ARGS)

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
