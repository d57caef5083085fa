# The two commands: `make run` (the whole product on this machine) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed

.PHONY: run test lint unit integration e2e package-check deploy deploy-check model bench soak soak-check fuzz job tables admin check-ledger recompute-stars clean

$(DEPS): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## run: DynamoDB Local (data in .local/), tables, the API on :8000, the event pump. Ctrl-C stops all.
run: $(DEPS)
	@exec $(PY) -m devstack.stack run $(if $(DOUBLES),--with-doubles)

## test: lint, unit, integration and end-to-end tests, the 60-second soak, the deployment checks; stops at the first failure.
test: lint unit integration e2e soak-check package-check deploy-check

lint: $(DEPS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(DEPS)
	$(PY) -m pytest tests/unit

integration: $(DEPS)
	$(PY) -m pytest tests/integration

e2e: $(DEPS)
	$(PY) -m pytest tests/e2e

## package-check: `chalice package` for prod (what CloudFormation would deploy) and the tables template pass cfn-lint.
package-check: $(DEPS)
	@rm -rf build/package && AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-cn-north-1} $(VENV)/bin/chalice package --stage prod build/package >/dev/null
	$(VENV)/bin/cfn-lint build/package/sam.json infra/tables.yaml
	@ls -l build/package/*.zip | awk '{printf "artefact %s: %.1f MB\n", $$NF, $$5 / 1048576}'

## deploy STAGE=dev|prod [KEEP_TABLES=1]: tables stack, config, chalice deploy, stream failure settings (docs/operations.md).
deploy: $(DEPS)
	@test "$(STAGE)" = dev -o "$(STAGE)" = prod || { echo "usage: make deploy STAGE=dev|prod [KEEP_TABLES=1]"; exit 2; }
	@$(PY) -m devstack.deploy --stage "$(STAGE)" $(if $(KEEP_TABLES),--keep-tables)

## deploy-check: the whole deploy sequence, run three times against a moto server (no AWS account needed).
deploy-check: $(DEPS)
	$(PY) -m pytest tests/deploy

## model: the model-based ledger test at a larger size (LEDGER_MODEL_EXAMPLES x LEDGER_MODEL_STEPS; make test runs 200 x 30).
model: $(DEPS)
	LEDGER_MODEL_EXAMPLES=$(or $(EXAMPLES),1000) LEDGER_MODEL_STEPS=$(or $(STEPS),50) \
		$(PY) -m pytest tests/integration/test_ledger_model.py -p no:logging -s

## bench: measured figures (cold start, ...); see docs/benchmarks.md.
bench: $(DEPS)
	@$(PY) -m scripts.bench

## soak [CLIENTS=20] [SECONDS=600]: random concurrent flows with injected DynamoDB faults, then the money must add up.
soak: $(DEPS)
	@$(PY) -m devstack.soak --clients $(or $(CLIENTS),20) --seconds $(or $(SECONDS),600)

## soak-check: the 60-second soak as a test (tests/soak; part of make test).
soak-check: $(DEPS)
	$(PY) -m pytest tests/soak -s

## fuzz [EXAMPLES=200]: the Schemathesis run of make test, deeper (FUZZ_SEED=... for other inputs).
fuzz: $(DEPS)
	FUZZ_EXAMPLES=$(or $(EXAMPLES),200) $(PY) -m pytest tests/e2e/test_fuzz.py -p no:cacheprovider -s

## job NAME=<function>: run one scheduled function now against the running `make run` stack.
job: $(DEPS)
	@test -n "$(NAME)" || { echo "usage: make job NAME=<function>, e.g. make job NAME=heartbeat"; exit 2; }
	@$(PY) -m devstack.stack job "$(NAME)"

## tables: create missing tables in the running DynamoDB Local and seed the hospital directory.
tables: $(DEPS)
	@$(PY) -m devstack.stack tables

## admin PHONE=<mobile> NAME=<name> [STAGE=local]: create an admin account (asks for the password).
admin: $(DEPS)
	@test -n "$(PHONE)" -a -n "$(NAME)" || { echo "usage: make admin PHONE=13800000000 NAME=Operator [STAGE=local]"; exit 2; }
	@$(PY) -m devstack.stack --stage "$(or $(STAGE),local)" admin --phone "$(PHONE)" --name "$(NAME)"

## check-ledger [STAGE=local]: check the ledger's invariants (L1-L3, L6); exits 1 on any violation.
check-ledger: $(DEPS)
	@$(PY) -m devstack.stack --stage "$(or $(STAGE),local)" check-ledger

## recompute-stars [STAGE=local] [FIX=1]: rebuild every doctor's reputation from the source items; exits 1 on a difference.
recompute-stars: $(DEPS)
	@$(PY) -m devstack.stack --stage "$(or $(STAGE),local)" recompute-stars $(if $(FIX),--fix)

## clean: remove local data, pump state and caches (keeps the venv and the DynamoDB Local package).
clean:
	rm -rf .local/dynamodb .local/pump .pytest_cache .ruff_cache
