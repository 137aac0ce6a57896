#!/bin/sh
# The image's install steps, in one place: the Dockerfile runs this, and so does
# tests/test_deploy_image.py (in a clean venv, on a copy of the build context), so they cannot rot.
#
#   sh deploy/image/install.sh PREFIX CACHE_DIR
#
# run from the build context (the repository root, less .dockerignore): installs the package
# (not editable) with the versions of constraints.txt into a new venv at PREFIX, then compiles
# the default guest into CACHE_DIR, where `classifier serve` looks for it (CLASSIFIER_CACHE_DIR),
# so the first request pays no compile.
set -eu
prefix=$1
cache_dir=$2
python3 -m venv "$prefix"
"$prefix/bin/pip" install --no-cache-dir --quiet --disable-pip-version-check -c constraints.txt .
"$prefix/bin/python" deploy/image/precompile.py "$cache_dir"
