#!/usr/bin/env bash
# Set up livernode on this machine: a virtual environment in .venv with the package installed.
#   deploy/setup.sh            the node itself
#   deploy/setup.sh --test     also the test tools and the real DICOM peers the tests start
#                              (DCMTK, dicom3tools, Orthanc, PixelMed; installed with apt-get when run as root)
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: livernode needs Python 3.11 or newer ($python is older)" >&2
  exit 1
fi

if [ "$with_test" = 1 ]; then
  need=()
  command -v storescu >/dev/null || need+=(dcmtk)
  command -v dciodvfy >/dev/null || need+=(dicom3tools)
  { command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ]; } || need+=(orthanc orthanc-python)
  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
  # PixelMed's DicomSRValidator reads our TID 1500 reports as a second, independent tool
  { [ -e /usr/share/java/pixelmed.jar ] && command -v java >/dev/null; } || need+=(pixelmed-apps)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "setup.sh: installing ${need[*]} with apt-get"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
      # the tests start their own Orthanc on free loopback ports; the packaged service is not needed
      if [[ " ${need[*]} " == *" orthanc "* ]]; then service orthanc stop >/dev/null 2>&1 || true; fi
    else
      echo "setup.sh: please install the Debian packages: ${need[*]} (tests that need them are skipped)" >&2
    fi
  fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned (torch==2.13.0) in pyproject.toml: on a machine with a local CPU wheel it is taken
# from there; elsewhere pip fetches that version.
if [ "$with_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup.sh: ready (.venv/bin/livernode)"
