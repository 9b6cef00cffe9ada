#!/usr/bin/env bash
# Rewrites the README's stage-kind tables from the stage kinds' own definitions
# (`covflow stage kinds --markdown`); tests/stage_params.rs fails when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
tables=$(cargo run -q -- stage kinds --markdown)
python3 - "$tables" <<'PY'
import sys
begin, end = "<!-- stage-kinds:begin (scripts/update-readme.sh) -->", "<!-- stage-kinds:end -->"
text = open("README.md").read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open("README.md", "w").write(head + begin + "\n" + sys.argv[1] + "\n\n" + end + tail)
PY
