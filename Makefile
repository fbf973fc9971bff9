# matrix-stack: build, test and demo on a Debian machine (run as root: make check).
SHELL := /bin/sh
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null)
DEB := out/matrix-stack_$(VERSION)_all.deb
# Debian's own python3 (with python3-jinja2, -yaml, -debconf ...), not one earlier on PATH.
export PATH := /usr/sbin:/usr/bin:/sbin:/bin
VENV := .venv
PYTHON := $(VENV)/bin/python
APT := DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false -y
BUILD_DEPS := debhelper dh-python pybuild-plugin-pyproject po-debconf python3-all \
	python3-setuptools dpkg-dev
TEST_DEPS := lintian mmdebstrap systemd-container ucf openssl python3-venv python3-pytest \
	python3-jinja2 python3-yaml python3-bcrypt python3-debian python3-debconf \
	python3-requests python3-signedjson python3-nacl python3-pexpect python3-psycopg2 \
	postgresql iproute2 python3-aioice gnupg gpgv python3-dnspython python3-unpaddedbase64 \
	python3-brotli python3-twisted wrk nghttp2-client gettext haproxy groff-base man-db
PIP_TOOLS := ruff mypy types-PyYAML matrix-nio

.PHONY: all deps deb base-image unit lint system check bench demo demo-stop clean

all: deb

deps:
	$(APT) update -o Acquire::Check-Valid-Until=false >/dev/null
	$(APT) install --no-install-recommends $(BUILD_DEPS) $(TEST_DEPS)
	test -x $(PYTHON) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(PIP_TOOLS)

deb: $(DEB)

$(DEB): $(shell find matrix_stack templates data bin doc debian tools -type f) setup.cfg pyproject.toml
	# One build at a time in this tree (dpkg-buildpackage shares debian/ and .pybuild/).
	flock /run/lock/matrix-stack-build.lock sh -ec 'debconf-updatepo; \
		dpkg-buildpackage -us -uc -b; mkdir -p out; \
		mv ../matrix-stack_$(VERSION)_all.deb ../matrix-stack_$(VERSION)_*.buildinfo \
			../matrix-stack_$(VERSION)_*.changes out/'


# The cached roots booted by the system tests: Debian 13 with matrix-synapse-py3 (built by
# the test bed from Synapse's released wheel) and sid with Debian's matrix-synapse, whose tree
# the unit tests also read Synapse's own source and schema from.
base-image:
	$(PYTHON) -c 'from tests.system.testbed import TARGETS, ensure_base_tarball as t, \
		ensure_base_tree as d; [d(t(target=target)) for target in TARGETS.values()]'

unit:
	$(PYTHON) -m pytest -q tests/unit

lint: $(DEB)
	$(PYTHON) -m ruff check matrix_stack tests tools bin/matrix-stack-admin
	$(PYTHON) -m mypy matrix_stack tests tools/completion.py
	for script in debian/matrix-stack.config debian/matrix-stack.postinst \
		debian/matrix-stack.prerm debian/matrix-stack.postrm; do sh -n $$script || exit 1; done
	lintian --fail-on error,warning $(DEB)

# Every booted test on Debian 13 + matrix-synapse-py3 (what users run); on sid, the ones
# marked every_target (what Debian's own packaging of Synapse changes).
system: $(DEB)
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) MATRIX_STACK_TARGET=trixie-py3 \
		$(PYTHON) -m pytest -v -x --durations=15 tests/system
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) MATRIX_STACK_TARGET=sid \
		$(PYTHON) -m pytest -v -x --durations=15 -m every_target tests/system

check: deps
	$(MAKE) deb
	$(MAKE) base-image
	$(MAKE) unit
	$(MAKE) lint
	$(MAKE) system

bench: $(DEB)
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) MATRIX_STACK_TARGET=trixie-py3 \
		$(PYTHON) -m tests.bench.bench
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) MATRIX_STACK_TARGET=sid \
		$(PYTHON) -m tests.bench.bench
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) \
		$(PYTHON) -m tests.bench.bench_serving
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) MATRIX_STACK_TARGET=trixie-py3 \
		$(PYTHON) -m tests.bench.bench_workers
	MATRIX_STACK_SYSTEM_TESTS=1 MATRIX_STACK_DEB=$(CURDIR)/$(DEB) \
		$(PYTHON) -m tests.bench.bench_data

# make demo: Debian 13 + matrix-synapse-py3; make demo TARGET=sid: sid + Debian's Synapse.
TARGET := trixie-py3

demo: deps
	$(MAKE) deb
	MATRIX_STACK_DEB=$(CURDIR)/$(DEB) MATRIX_STACK_TARGET=$(TARGET) \
		$(PYTHON) -m tests.system.demo start

demo-stop:
	$(PYTHON) -m tests.system.demo stop

clean:
	rm -rf out build .pybuild .mypy_cache .ruff_cache .pytest_cache
	dh_clean 2>/dev/null || true
