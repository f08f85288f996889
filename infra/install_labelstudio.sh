#!/usr/bin/env bash
# Label Studio for the loopback round-trip test (tests/test_labelstudio.py), in a virtualenv of its own:
# .venv-labelstudio. Its pins (Django 5.2, pandas, pyarrow, openai<2, ...) are not ours, and nothing of ours
# imports it: the test talks to its server over HTTP. Nothing is started here.
# 1.23.2 is PyPI's newest release; it runs on Python 3.11 (>=3.10) and its API is what docs/feedback.md names.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-labelstudio
CONSTRAINTS=infra/labelstudio/constraints.txt
STAMP=$VENV/.installed
# Installed from this very list: nothing to do. A changed list reinstalls.
if [ -x $VENV/bin/label-studio ] && [ "$(cat $STAMP 2>/dev/null)" = "$(md5sum < $CONSTRAINTS)" ]; then
    exit 0
fi
test -x $VENV/bin/python || "${PYTHON:-python3.11}" -m venv $VENV
# uv when `make install` has put it in .venv (it downloads in parallel); pip otherwise, or where uv's index
# cannot be reached (uv reads no pip config).
if [ -x .venv/bin/uv ]; then
    .venv/bin/uv pip install --python $VENV/bin/python -q -c $CONSTRAINTS label-studio \
        || $VENV/bin/python -m pip install -q -c $CONSTRAINTS label-studio
else
    $VENV/bin/python -m pip install -q -c $CONSTRAINTS label-studio
fi
md5sum < $CONSTRAINTS > $STAMP
