#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels of scripts/device_wheels.txt, for Python 3.12 on x86-64, as
# the device tool's README says: a lent GPU machine reaches no package registry, so scripts/device_check.sh
# installs them from there (the run carries `.whl`). Run from anywhere in the repo, where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
PYTHON=${PYTHON:-python3}
grep -v '^#' scripts/device_wheels.txt | while read -r spec; do
  [ -n "$spec" ] || continue
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$spec" 2>/dev/null && continue
  # published as a source distribution only (antlr4-python3-runtime 4.9.3): build its pure-Python wheel
  "$PYTHON" -m pip wheel -q --no-deps -w .whl "$spec"
done
ls .whl
du -sh .whl
