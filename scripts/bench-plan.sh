#!/usr/bin/env bash
# Planning a fully cached fan-out: covflow plan against snakemake -n on the same DAG
# (N items × 3 per-item rules + 1 gather). Usage: scripts/bench-plan.sh [N] (default 3334: 10 003 tasks).
# Needs `snakemake` on PATH (pip install snakemake) and a release build of covflow.
set -euo pipefail
n=${1:-3334}
here=$(cd "$(dirname "$0")/.." && pwd)
covflow=${COVFLOW:-$here/target/release/covflow}
work=$(mktemp -d /tmp/covflow-bench-plan.XXXXXX)
cd "$work"

cat > p.yaml <<YAML
name: plan-bench
datasets:
  xs: {count: $n}
stages:
  a: {uses: exec, foreach: xs, with: {run: "echo {item} > {out}/a"}}
  b: {uses: exec, foreach: a, with: {run: "cp {in.a}/a {out}/b"}}
  c: {uses: exec, foreach: b, with: {run: "cp {in.b}/b {out}/c"}}
  all: {uses: exec, needs: [c], with: {run: "wc -l < {inlist.c} > {out}/n"}}
YAML

cat > Snakefile <<SMK
IDS = [f"item_{i:0${#n}d}" for i in range($n)]
rule all:
    input: expand("c/{id}", id=IDS)
    output: "all.txt"
    shell: "ls c | wc -l > {output}"
rule a:
    output: "a/{id}"
    shell: "echo {wildcards.id} > {output}"
rule b:
    input: "a/{id}"
    output: "b/{id}"
    shell: "cp {input} {output}"
rule c:
    input: "b/{id}"
    output: "c/{id}"
    shell: "cp {input} {output}"
SMK

echo "# filling covflow's cache ($((3 * n + 1)) tasks)"
/usr/bin/time -f "covflow run (cold): %e s, %M KiB max RSS" "$covflow" run p.yaml --jobs "${JOBS:-8}" >/dev/null
# Snakemake's outputs made directly (running 30 000 jobs through it takes ~20 min), oldest first
# so that everything is up to date.
mkdir -p a b c
width=$(( ${#n} ))
for d in a b c; do
    for ((i = 0; i < n; i++)); do printf -v id "item_%0${width}d" "$i"; : > "$d/$id"; done
    sleep 1
done
touch all.txt

echo "# fully cached: plan"
for i in 1 2 3; do
    /usr/bin/time -f "covflow plan: %e s, %M KiB max RSS" "$covflow" plan p.yaml --json > plan.json
done
python3 -c "import json; t=json.load(open('plan.json'))['tasks']; print(len(t), 'tasks,', sum(x['state']=='cached' for x in t), 'cached')"
/usr/bin/time -f "covflow run (all cached): %e s" "$covflow" run p.yaml >/dev/null
for i in 1 2 3; do
    /usr/bin/time -f "snakemake -n: %e s, %M KiB max RSS" snakemake -n --quiet all -c1 > sm.txt 2>&1 || true
done
tail -3 sm.txt
echo "# work dir: $work"
