# Build, test and demo commands for the meshops.sidecar collection.
# The logic lives in tests/utils/ (bootstrap.sh, build-images.sh, run-gates.sh, gates/*.sh);
# this file only names the entry points. `make help` lists them.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV          := $(CURDIR)/.venv
CACHE         := $(CURDIR)/.cache
UTILS         := tests/utils
RUN_GATES     := $(UTILS)/run-gates.sh
# Collections dirs: the built collection installed for the demo, and third-party ones.
INSTALL_DIR   := $(CACHE)/install
DEPS_DIR      := $(CACHE)/deps
NAMESPACE     := $(shell sed -n 's/^namespace:[[:space:]]*//p' galaxy.yml)
NAME          := $(shell sed -n 's/^name:[[:space:]]*//p' galaxy.yml)
COLLECTION    := $(NAMESPACE).$(NAME)

export PATH := $(VENV)/bin:$(PATH)
export CONTAINERS_CONF := $(CURDIR)/$(UTILS)/containers.conf
export ANSIBLE_COLLECTIONS_PATH := $(DEPS_DIR)

# The demo runs the installed collection (not the working tree) on the implicit localhost,
# whose interpreter is the venv's python (ansible-core + python-iptables).
DEMO_ENV      := ANSIBLE_COLLECTIONS_PATH=$(INSTALL_DIR):$(DEPS_DIR) ANSIBLE_LOCALHOST_WARNING=false \
                 ANSIBLE_INVENTORY_UNPARSED_WARNING=false

# Extra arguments for one gate, e.g. make sanity ARGS='--test validate-modules'
ARGS ?=
gate_args = $(if $(strip $(ARGS)),-- $(ARGS),)

.PHONY: help bootstrap venv deps images test lint sanity unit pytest integration molecule fleet docs cores \
        build install demo demo-clean bench lock clean distclean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

bootstrap: ## install everything on a fresh machine: apt packages (root), .venv, collections
	bash $(UTILS)/bootstrap.sh apt venv collections

venv: ## create/update .venv from tests/requirements.txt (+ lock)
	bash $(UTILS)/bootstrap.sh venv

deps: ## .venv plus third-party collections (containers.podman, ...) in .cache/deps
	bash $(UTILS)/bootstrap.sh venv collections

images: ## build the molecule base images (skipped when their recipe is unchanged)
	bash $(UTILS)/build-images.sh

test: deps ## every gate (lint sanity unit integration molecule fleet docs cores), summary table at the end
	bash $(RUN_GATES)

lint: deps ## ansible-lint, production profile
	bash $(RUN_GATES) lint $(gate_args)

sanity: deps ## ansible-test sanity from a real ansible_collections/ copy (no ignore files)
	bash $(RUN_GATES) sanity $(gate_args)

unit: deps ## ansible-test units
	bash $(RUN_GATES) unit $(gate_args)

pytest: deps ## quick unit run: plain pytest on tests/unit with the ansible_collections layout
	@mkdir -p $(CACHE)/pytest/ansible_collections/$(NAMESPACE)
	@ln -sfn ../../../.. $(CACHE)/pytest/ansible_collections/$(NAMESPACE)/$(NAME)
	PYTHONPATH=$(CACHE)/pytest pytest -n auto -p no:cacheprovider tests/unit $(ARGS)

integration: deps ## ansible-test integration (root, destructive: real namespaces, both backends)
	bash $(RUN_GATES) integration $(gate_args)

molecule: deps ## molecule test of every scenario in podman (builds the images if needed)
	bash $(RUN_GATES) molecule $(gate_args)

fleet: deps ## onboard and offboard three Debian 11/12/13 "VMs" over real SSH (root; builds their images if needed)
	bash $(RUN_GATES) fleet $(gate_args)

docs: deps ## ansible-doc, antsibull-docs/-changelog lint, collection build + install check
	bash $(RUN_GATES) docs $(gate_args)

cores: deps ## the other ansible-core versions: sanity + units on each, integration at the edges (ARGS=2.17)
	bash $(RUN_GATES) cores $(gate_args)

build: deps ## build the collection tarball into .cache/build
	bash $(UTILS)/build-collection.sh

install: deps ## build and install the collection into .cache/install
	bash $(UTILS)/build-collection.sh --install $(INSTALL_DIR)

demo: ## fresh machine (root): install what is needed, build + install, run the demo playbook
	bash $(UTILS)/bootstrap.sh apt venv collections
	bash $(UTILS)/build-collection.sh --install $(INSTALL_DIR)
	$(DEMO_ENV) $(UTILS)/demo.sh $(COLLECTION) $(ARGS)

demo-clean: ## undo the demo (demo_state=absent)
	$(DEMO_ENV) ansible-playbook $(COLLECTION).demo -e demo_state=absent $(ARGS)

bench: deps ## run tests/bench/run.sh (not part of make test)
	@if [ -x tests/bench/run.sh ] || [ -f tests/bench/run.sh ]; then \
	    bash tests/bench/run.sh $(ARGS); \
	else \
	    echo "tests/bench/run.sh does not exist yet" >&2; exit 1; \
	fi

lock: ## regenerate tests/requirements-lock.txt from tests/requirements.txt (needs PyPI)
	bash $(UTILS)/lock-requirements.sh

clean: ## remove build and test output (keeps .venv, images, caches of ansible-test venvs)
	rm -rf $(CACHE)/ansible-test $(CACHE)/build $(CACHE)/install $(CACHE)/logs $(CACHE)/pytest \
	    tests/output .ansible

distclean: clean ## also remove .venv and every cache (podman images stay: podman rmi them)
	rm -rf $(VENV) $(CACHE)
