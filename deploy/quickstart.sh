#!/usr/bin/env bash
# The README's first command: set up livernode in .venv and run the DICOM node on its embedded
# defaults (AE title LIVERNODE on port 11112, spool and SQLite queue under ./livernode-data, the
# bundled demo model: trained on synthetic phantoms, NOT for clinical use). Stop it with Ctrl-C.
#   deploy/quickstart.sh [--check]    --check: instead of serving, process one phantom study
#                                     offline (livernode phantom + livernode process) and exit
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
if [ "${1:-}" = "--check" ]; then
  demo=livernode-data/demo
  rm -rf "$demo"
  .venv/bin/livernode phantom "$demo/phantom" --seed 7 --slices 40
  .venv/bin/livernode process "$demo/phantom/dicom" --out "$demo/results"
  exit 0
fi
echo "quickstart: starting the node; send a study with:"
echo "  .venv/bin/livernode phantom /tmp/study --seed 1 && storescu -aec LIVERNODE +sd +r localhost 11112 /tmp/study/dicom"
exec .venv/bin/livernode serve
