# tisynth: the two quick-start commands and a few conveniences.
#   make demo   set up .venv (first time: builds mmcv once) and run `kedro run` on the embedded default
#   make test   set up .venv with test tools and run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
# test processes (pytest-xdist): auto = one per core; 0 runs the suite in one process
TEST_WORKERS ?= auto
export KEDRO_DISABLE_TELEMETRY := 1

.PHONY: setup setup-dev demo synthesize test viz viz-build mlflow-ui dag clean

setup:
	@bash scripts/setup.sh

setup-dev:
	@bash scripts/setup.sh --dev

demo: setup
	$(BIN)/kedro run

synthesize: setup
	$(BIN)/kedro run --pipeline=synthesize

test: setup-dev
	@# yapf (imported by mmengine) rewrites its grammar cache when the venv is newer than it and renames
	@# the file before it is flushed, so test processes starting together can read it empty: warm it first
	$(BIN)/python -c "import yapf"
	$(BIN)/python -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadfile

viz: setup
	$(BIN)/kedro viz run --host 127.0.0.1 --no-browser

viz-build: setup
	$(BIN)/kedro viz build

mlflow-ui: setup
	@$(BIN)/python -m tisynth.mlflow_runs sqlite:///mlflow.db 127.0.0.1 5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

dag: setup
	$(BIN)/dvc dag

clean:
	rm -rf data/0[2-8]_*/[!.]* build mlruns mlflow.db
