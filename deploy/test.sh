#!/usr/bin/env bash
# Set up everything the tests need (venv, DCMTK, dicom3tools) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --test
exec .venv/bin/python -m pytest -q "$@"
