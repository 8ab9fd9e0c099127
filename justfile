# Recipes for working on Okta Agent Proxy. Install first:
#   python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'
# then run `.venv/bin/just <recipe>` (or `just` with the venv activated).

set shell := ["bash", "-euo", "pipefail", "-c"]

bin := if path_exists(".venv/bin") == "true" { ".venv/bin/" } else { "" }

# List the recipes.
default:
    @{{bin}}just --list

# Run the dev IdP, the demo backends and the gateway on 127.0.0.1.
demo *args:
    {{bin}}agent-proxy demo {{args}}

# Serve the gateway with a config file (default: config/gateway.yaml).
run config="config/gateway.yaml":
    {{bin}}agent-proxy run --config {{config}}

# Validate a config and print its chains.
check config="config/gateway.yaml":
    {{bin}}agent-proxy check --config {{config}}

# Regenerate the published JSON Schemas: the config file's and the audit events'.
schema:
    {{bin}}python -m gateway.config.schema > config/gateway.schema.json
    {{bin}}python -m gateway.audit.schema > observability/audit-events.schema.json

# Run the whole test suite.
test *args:
    {{bin}}pytest {{args}}

# Format check, lint and type check.
lint:
    {{bin}}ruff format --check src tests examples bench
    {{bin}}ruff check src tests examples bench
    {{bin}}mypy

# Run the benchmarks under bench/: forward overhead, streaming in both eras,
# then what tracing and audit cost.
bench:
    {{bin}}python bench/forward_overhead.py
    {{bin}}python bench/streaming.py --protocol 2025-11-25
    {{bin}}python bench/streaming.py --protocol 2026-07-28
    {{bin}}python bench/tracing_overhead.py
