# ftlab's commands. Each one sets everything up first (quick when already done).
#   make lab     JupyterLab on notebooks/
#   make test    the whole test suite: unit tests, then every notebook under nbval
#   make demo    a headless fine-tune from the command line (progress bar, table, PNG)
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ftlab-installed
PORT    ?= 8888

.PHONY: setup lab test demo figures bench

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@VENV=$(VENV) bash scripts/bootstrap.sh
	@touch $(STAMP)

# data and models: Fashion-MNIST, BBC News, MiniLM (hash-checked), ftlab's pretrained ResNet-18
setup: $(STAMP)
	@$(PY) -m ftlab setup

lab: setup
	@cd notebooks && ../$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(PORT) \
		$$( [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ] || echo --no-browser )

# the test suite also needs Debian's chromium for its real-browser dashboard test
test: $(STAMP)
	@$(PY) -m ftlab setup --browser
	@$(PY) -m pytest tests -q
	@$(PY) -m pytest --nbval-lax --nbval-current-env -q notebooks

demo: setup
	@$(PY) -m ftlab finetune --model resnet18 --weights fashion-mnist --data digits --n-train 500 \
		--lr 1e-3 --epochs 5 --frozen-depth 2 --png demo-curves.png

bench: setup
	@$(PY) bench/run.py

figures: setup
	@$(PY) scripts/figures.py
