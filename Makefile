# ftlab's commands. Each one sets everything up first (quick when already done).
#   make lab     JupyterLab on notebooks/
#   make test    the whole test suite: unit tests and the graded course, then every notebook under nbval
#   make assign  student notebooks (notebooks/) and autograder zips (build/autograder/) from notebooks/source/
#   make demo    a headless fine-tune from the command line (progress bar, table, PNG)
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ftlab-installed
PORT    ?= 8888
# torch threads per notebook kernel under nbval: 28px images gain nothing from more, and on a shared
# 2-core machine two threads stall each other (lesson 01: about 30 s with 1, 160 s with 2 under load)
NB_THREADS ?= 1
# every notebook under nbval: the student notebooks and, at the same time, the solutions (two processes)
NBVAL   = OMP_NUM_THREADS=$(NB_THREADS) $(PY) -m pytest --nbval-lax --nbval-current-env -q -p no:cacheprovider

.PHONY: setup lab test test-lowest test-colab demo figures bench assign

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@VENV=$(VENV) bash scripts/bootstrap.sh
	@touch $(STAMP)

# data and models: Fashion-MNIST, BBC News, MiniLM (hash-checked), ftlab's pretrained ResNet-18
setup: $(STAMP)
	@$(PY) -m ftlab setup

lab: setup
	@cd notebooks && ../$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(PORT) \
		$$( [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ] || echo --no-browser ) \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root )  # containers and CI machines often run as root

# the test suite also needs Debian's chromium for its real-browser dashboard test
test: $(STAMP)
	@$(PY) -m ftlab setup --browser
	@$(PY) -m pytest tests -q
	@mkdir -p build; $(NBVAL) notebooks/source > build/nbval-solutions.log 2>&1 & solutions=$$!; \
		$(NBVAL) notebooks/*.ipynb; students=$$?; wait $$solutions; status=$$?; \
		echo "--- the solution notebooks (notebooks/source):"; cat build/nbval-solutions.log; \
		rm -f notebooks/.OTTER_LOG notebooks/source/.OTTER_LOG; [ $$students -eq 0 ] && [ $$status -eq 0 ]

# the unit tests (not the course) with every direct dependency at the lowest version pyproject.toml
# allows, in a fresh .venv-lowest; torch and torchvision stay at this machine's wheels (see the script)
test-lowest:
	@bash scripts/test_lowest.sh

# the course on an emulated Colab (colab/test_emulation.py): Colab's versions in .venv-colab
# (scripts/colab_env.sh), a fake google.colab, the course served from a local git remote; the first
# cell, lessons 00 and 03 under nbval, the dashboard in JupyterLab with ipywidgets 7 (Debian's chromium)
test-colab:
	@bash scripts/colab_env.sh
	@OMP_NUM_THREADS=1 .venv-colab/bin/python -m pytest colab/test_emulation.py -v -p no:cacheprovider --durations=0

# the course: otter assign on every notebooks/source/*.ipynb (scripts/assign.py); the zips hold the
# hidden tests and stay in build/ (git-ignored), never in what learners get
assign: $(STAMP)
	@$(PY) scripts/assign.py

# the course learners clone and open on Colab, with its address written in (docs/instructors.md):
#   make course URL=https://github.com/OWNER/NAME [COURSE_OUT=../ftlab-course]
# student notebooks (run `make assign` first if notebooks/source changed), ftlab, data cards, a README;
# never notebooks/source or build/ (ftlab/course.py checks what it writes)
COURSE_OUT ?= ../ftlab-course
.PHONY: course
course: $(STAMP)
	@[ -n "$(URL)" ] || { echo "make course: give the course repository's URL: make course URL=https://github.com/OWNER/NAME"; exit 2; }
	@$(PY) -m ftlab course build --repo "$(URL)" "$(COURSE_OUT)"

demo: setup
	@$(PY) -m ftlab finetune --model resnet18 --weights fashion-mnist --data digits --n-train 500 \
		--lr 1e-3 --epochs 5 --frozen-depth 2 --png demo-curves.png

bench: setup
	@$(PY) bench/run.py

figures: setup
	@$(PY) scripts/figures.py
