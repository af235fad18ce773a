# Two commands: `make run` and `make test`. Everything else is here for them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTED := $(VENV)/.test-installed

.PHONY: run test test-deps lint wheel-check bench bench-ab clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Running needs only the gateway; the test tools (and gssapi, built against libkrb5-dev) come with `make test`.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[fast]'
	touch $(STAMP)

$(TESTED): pyproject.toml $(STAMP) | test-deps
	$(BIN)/pip install -q -e '.[fast,test,kerberos]'
	touch $(TESTED)

run: $(STAMP)  ## start the gateway on the embedded default config (http://localhost:8000/)
	$(BIN)/wsgate run

lint: $(TESTED)  ## static checks: ruff, mypy --strict and the layering contracts (pyproject.toml)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-logo --no-cache

# Real parts the tests use on loopback: keytool (JKS/JCEKS stores), slapd (the ldap module),
# Debian's Chromium driven by Playwright (no browser download) and certutil (its trust store), an MIT KDC
# (krb5kdc, kadmin.local, kinit/kvno, k5tls for kinit over the gateway's HTTPS KDC proxy) and libkrb5-dev
# with gcc to build python-gssapi (it has no Linux wheels), curl (its --negotiate is a real SPNEGO client),
# redis-server (the shared state of several gateway nodes), and the brokers behind amqp.proxy and mqtt.proxy
# (rabbitmq-server, mosquitto), and iproute2 + nftables (network namespaces for the layered-DMZ tests).
APT_TEST_PACKAGES := default-jre-headless slapd ldap-utils chromium libnss3-tools \
	krb5-kdc krb5-admin-server krb5-user krb5-k5tls libkrb5-dev gcc curl redis-server rabbitmq-server mosquitto \
	iproute2 nftables
APT_TEST_COMMANDS := keytool /usr/sbin/slapd ldapsearch chromium certutil \
	/usr/sbin/krb5kdc /usr/sbin/kadmin.local kinit krb5-config gcc curl redis-server \
	/usr/sbin/rabbitmq-server /usr/sbin/mosquitto /usr/sbin/ip /usr/sbin/nft

test-deps:  ## install the Debian packages tests need, if missing
	@missing=0; for c in $(APT_TEST_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing $(APT_TEST_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_TEST_PACKAGES) >/dev/null; \
	fi

test: test-deps lint  ## install what tests need, check, and run the tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Part of `make test` too (tests/test_wheel.py): a wheel in a fresh venv, away from src/, where a resource
# missing from the package data shows (an editable install hides it).
wheel-check: $(TESTED)  ## build the wheel, install it into a fresh venv, check-config the examples, serve one echo
	$(BIN)/python -m pytest tests/test_wheel.py $(PYTEST_ARGS)

bench: $(STAMP)  ## wsgate against reference servers in one run (not part of make test)
	$(BIN)/pip install -q 'websockify==0.13.0' 'picows==2.3.1'
	command -v nginx >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends nginx; }
	command -v redis-server >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# A/B of two wsgate versions (bench/README.md): this checkout's src/ against $(AB)'s, alternating round by
# round on the echo and proxy cells; needs only the load client (picows). Exits 1 on a regression.
AB ?= main
bench-ab: $(STAMP)  ## this checkout's wsgate vs git revision AB (default main), echo and proxy cells, one run
	$(BIN)/pip install -q 'picows==2.3.1'
	$(BIN)/python bench/run.py --ab $(AB) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
