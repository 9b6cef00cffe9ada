#!/usr/bin/env python3
"""SLURM submission overhead: a fan-out of N trivial tasks through covflow's SLURM executor and
through Snakemake's SLURM executor plugin, on the same (local, one-node) SLURM, in one run.

Measures, for each: time from the command's start until all N jobs are known to SLURM
("submitted"), and until the command returns with every task done ("finished"). Jobs are counted
by polling `squeue -h -r -t all` for job ids above the last id before the run (no accounting
database needed; finished jobs stay listed for MinJobAge seconds).

Usage: scripts/bench-slurm.py [N] (default 1000). Needs a running SLURM
(scripts/slurm-local.sh start), a release covflow, and `snakemake` with
`snakemake-executor-plugin-slurm` on PATH.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COVFLOW = os.environ.get("COVFLOW", os.path.join(HERE, "target", "release", "covflow"))


def last_job_id():
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout
    ids = [int(l.split("_")[0]) for l in out.split() if l.split("_")[0].isdigit()]
    return max(ids, default=0)


def measure(name, cmd, cwd):
    base = last_job_id()
    t0 = time.monotonic()
    seen = {"t": None}
    done = threading.Event()

    def poll():
        while not done.is_set():
            out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout
            n = sum(1 for l in out.split() if l.split("_")[0].isdigit() and int(l.split("_")[0]) > base)
            if n >= N and seen["t"] is None:
                seen["t"] = time.monotonic() - t0
            time.sleep(0.2)

    th = threading.Thread(target=poll)
    th.start()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    total = time.monotonic() - t0
    done.set()
    th.join()
    r = {"tool": name, "tasks": N, "submitted_s": seen["t"], "finished_s": total, "rc": p.returncode}
    if p.returncode != 0:
        r["stderr_tail"] = p.stderr[-800:]
    print(json.dumps(r), flush=True)
    return r


def main():
    work = tempfile.mkdtemp(prefix="covflow-bench-slurm.")
    with open(os.path.join(work, "p.yaml"), "w") as f:
        f.write(f"""name: slurm-bench
datasets:
  xs: {{count: {N}}}
stages:
  t: {{uses: exec, foreach: xs, with: {{run: "echo {{item}} > {{out}}/x"}}}}
""")
    width = len(str(N - 1))
    with open(os.path.join(work, "Snakefile"), "w") as f:
        f.write(f"""IDS = [f"item_{{i:0{width}d}}" for i in range({N})]
rule all:
    input: expand("out/{{id}}", id=IDS)
rule t:
    output: "out/{{id}}"
    resources: mem_mb=100, runtime=10
    shell: "echo {{wildcards.id}} > {{output}}"
""")
    measure("covflow --executor slurm", [COVFLOW, "run", "p.yaml", "--executor", "slurm"], work)
    measure(
        "snakemake --executor slurm",
        ["snakemake", "all", "--executor", "slurm", "-j", str(N), "--quiet", "--latency-wait", "5",
         "--default-resources", "slurm_partition=debug",
         # No accounting database here: poll squeue, and start polling at once.
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"],
        work,
    )
    print(f"# work dir: {work}")


main()
