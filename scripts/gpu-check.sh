#!/usr/bin/env bash
# GPU checks of covflow, in two halves:
#
#   scripts/gpu-check.sh build   here (x86_64, no GPU needed): builds the CUDA binaries into .gpu/
#   scripts/gpu-check.sh run     on the GPU machine (carry .gpu): runs the benchmarks beside the
#                                PyTorch reference in the same call and prints one table
#
# With the workplace's device tool:  run(command="bash scripts/gpu-check.sh run", carry=[".gpu"])
# SUITE=gan measures the 3D GAN instead (iteration beside PyTorch's, then learning curves).
# Results (JSON per run, compile/autotune logs) land in $OUT (or /tmp/gpu-check-out), as they
# are measured. The main suite runs in order of importance (kernels and preprocessing for issue 3,
# TransUNet im2col cold/warm, the allocator experiment, PyTorch, implicit GEMM, batch 32,
# profiles) and skips what would run past BUDGET_S seconds (default 540): use timeout_s=600.
#
# Binaries: .gpu/covflow.gz          burn without autotune and without fusion (covflow's default)
#           .gpu/covflow-fusion.gz   burn's fusion on, autotune off (WITH_FUSION=1; run with SUITE=fusion)
#           .gpu/covflow-default.gz  burn's own defaults on CUDA (autotune + fusion; WITH_DEFAULT=1)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)

build() {
    cd "$here" || exit 1
    mkdir -p .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    export CUDARC_CUDA_VERSION=13000
    cargo build --release --features cuda || exit 1
    # Compressed: the device tool carries at most 64 MiB.
    strip -o .gpu/covflow target/release/covflow && gzip -f .gpu/covflow
    if [ "${WITH_FUSION:-0}" = 1 ]; then
        CARGO_TARGET_DIR=target/fusion cargo build --release --features cuda,fusion || exit 1
        strip -o .gpu/covflow-fusion target/fusion/release/covflow && gzip -f .gpu/covflow-fusion
    fi
    if [ "${WITH_DEFAULT:-0}" = 1 ]; then
        CARGO_TARGET_DIR=target/burn-default cargo build --release --features cuda,autotune,fusion || exit 1
        strip -o .gpu/covflow-default target/burn-default/release/covflow && gzip -f .gpu/covflow-default
    fi
    ls -la .gpu
}

run() {
    cd "$here" || exit 1
    out=${OUT:-/tmp/gpu-check-out}
    mkdir -p "$out"
    export CUDA_PATH=/usr/local/cuda LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    work=/tmp/covflow-gpu-check
    rm -rf "$work" && mkdir -p "$work/logs"
    # Written as it goes, so that a run cut short still brings back what it measured.
    results="$out/results.jsonl"
    mkdir -p "$work/bin"
    for f in .gpu/*.gz; do
        gunzip -c "$f" > "$work/bin/$(basename "$f" .gz)" && chmod +x "$work/bin/$(basename "$f" .gz)"
    done
    : > "$results"

    # One cubecl configuration per run kind: persistent PTX and autotune caches (shared by the
    # runs of one binary), the compilation logger, and optionally the per-kernel profiler.
    setup() { # $1 = config dir, $2 = cache dir, $3 = profiling level (disabled|basic)
        mkdir -p "$1" "$2/ptx" "$2/tune"
        cat > "$1/cubecl.toml" <<EOF
[compilation]
cache = { file = "$2/ptx" }

[compilation.logger]
level = "basic"
file = "$1/compile.log"

[autotune]
cache = { file = "$2/tune" }

[autotune.logger]
level = "minimal"
file = "$1/autotune.log"

[profiling.logger]
level = "${3:-disabled}"
file = "$1/profile.log"
EOF
    }

    # bench NAME CONFIG_DIR TIMEOUT BINARY ARGS...
    bench() {
        local name=$1 dir=$2 limit=$3 bin=$4
        shift 4
        : > "$dir/compile.log"
        : > "$dir/autotune.log"
        : > "$dir/profile.log"
        local t0 t1 rc json
        t0=$(date +%s.%N)
        (cd "$dir" && timeout "$limit" "$bin" bench transunet --device cuda "$@" \
            > "$work/logs/$name.json" 2> "$work/logs/$name.err")
        rc=$?
        t1=$(date +%s.%N)
        for f in compile autotune profile; do cp "$dir/$f.log" "$work/logs/$name.$f.log"; done
        local compiled tuned
        compiled=$(grep -c 'Compiling kernel' "$dir/compile.log")
        tuned=$(wc -l < "$dir/autotune.log")
        json=$(tail -n 1 "$work/logs/$name.json")
        [ -n "$json" ] || json='{}'
        python3 - "$name" "$rc" "$t0" "$t1" "$compiled" "$tuned" "$json" >> "$results" <<'PY'
import json, sys
name, rc, t0, t1, compiled, tuned, js = sys.argv[1:]
d = json.loads(js)
d.update(run=name, rc=int(rc), wall_s=float(t1) - float(t0), kernels_compiled=int(compiled),
         autotune_log_lines=int(tuned))
print(json.dumps(d))
PY
        echo "[$name] rc=$rc compiled=$compiled autotune_lines=$tuned $(tail -n 2 "$work/logs/$name.err" | tr '\n' ' ')"
        grep -m1 -A4 'panicked' "$work/logs/$name.err" | head -c 800
    }

    # Every step gets a time limit and is skipped when it would run past the call's deadline
    # (BUDGET_S, default 540 s: the device tool allows 600 s a command), so one call always
    # brings back the most important numbers first.
    deadline=$((SECONDS + ${BUDGET_S:-540}))
    fits() { # $1 = step name, $2 = its limit in seconds
        if [ $((SECONDS + $2)) -gt "$deadline" ]; then
            echo "[$1] skipped: $(( deadline - SECONDS )) s left, needs up to $2 s"
            return 1
        fi
    }
    # step NAME LIMIT CMD...: runs CMD (in $work) with a timeout, its stdout to logs/NAME.jsonl.
    step() {
        local name=$1 limit=$2
        shift 2
        fits "$name" "$limit" || return 0
        echo "[$name]"
        # Into $out as it goes too: a call cut short still brings back what it measured.
        (cd "$work" && timeout "$limit" "$@") 2> "$work/logs/$name.err" \
            | tee "$work/logs/$name.jsonl" "$out/$name.jsonl"
        local rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || { echo "[$name] FAILED (rc $rc)"; tail -5 "$work/logs/$name.err"; }
    }

    suite_main() {
        local bin="$work/bin/covflow" ct="$work/mm/studies/CT-1/study_0001.nii.gz"
        # Issue 3: every cubecl kernel against its CPU reference at MosMed sizes, beside a copy;
        # then the preprocessing per MosMed-size study, kernels on CUDA and references on the CPU.
        step kernels 120 "$bin" bench kernels --device cuda --reps 20
        "$bin" phantom --out "$work/mm" --count 1 --size mosmed > /dev/null
        step preprocess-cuda 60 "$bin" bench preprocess "$ct" --device cuda --reps 5
        step preprocess-cpu 60 "$bin" bench preprocess "$ct" --device cpu --reps 3

        # Issue 5: the TransUNet, first with the first configuration measured (im2col), then the
        # allocator experiment, PyTorch in the same call, then implicit GEMM.
        setup "$work/run" "$work/cache" disabled
        fits cold-b8 180 && bench cold-b8 "$work/run" 180 "$bin" --batch 8 --steps 20
        fits warm-b8 60 && bench warm-b8 "$work/run" 60 "$bin" --batch 8 --steps 30
        # An earlier run saw cubecl's persistent pool allocate new pages every step: the same warm
        # run with dynamic allocation only.
        setup "$work/nopersist" "$work/cache" disabled
        printf '\n[memory]\npersistent_memory = "disabled"\n' >> "$work/nopersist/cubecl.toml"
        fits nopersist-warm-b8 60 && bench nopersist-warm-b8 "$work/nopersist" 60 "$bin" --batch 8 --steps 30
        if fits pytorch 90; then
            echo "[pytorch] reference"
            (timeout 90 python3 scripts/transunet_ref.py --batch 8 32 --steps 30 \
                > "$work/logs/pytorch.jsonl" 2> "$work/logs/pytorch.err") || tail -5 "$work/logs/pytorch.err"
            sed 's/^{/{"run": "pytorch", /' "$work/logs/pytorch.jsonl" >> "$results"
        fi
        # Implicit-GEMM convolution (burn-cubecl, matrix units) against burn's conv2d on the card
        # (relative errors forward/backward, times), then in the whole model.
        step conv-gemm 90 "$bin" bench conv --device cuda --conv implicit-gemm --batch 8 --reps 5
        fits gemm-b8 120 && bench gemm-b8 "$work/run" 120 "$bin" --batch 8 --steps 20 --conv implicit-gemm
        fits warm-b32 90 && bench warm-b32 "$work/run" 90 "$bin" --batch 32 --steps 20
        fits nopersist-warm-b32 90 && bench nopersist-warm-b32 "$work/nopersist" 90 "$bin" --batch 32 --steps 20
        step conv-im2col 60 "$bin" bench conv --device cuda --conv im2col --batch 8 --reps 5

        # Where the time goes: per-kernel profiles of a few steps.
        setup "$work/prof" "$work/cache" basic
        fits profile-im2col-b8 60 && bench profile-im2col-b8 "$work/prof" 60 "$bin" --batch 8 --steps 3
        fits profile-native-b8 120 && bench profile-native-b8 "$work/prof" 120 "$bin" --batch 8 --steps 3 --conv native

        if [ -x "$work/bin/covflow-default" ] && [ "${RUN_DEFAULT:-0}" = 1 ]; then
            setup "$work/default" "$work/default-cache" disabled
            bench default-cold-b8 "$work/default" "${DEFAULT_LIMIT:-60}" "$work/bin/covflow-default" --batch 8 --steps 5
        fi
    }

    # burn's fusion on (elementwise chains fused into one kernel), and where allocation time goes.
    suite_fusion() {
        local bin="$work/bin/covflow-fusion"
        setup "$work/fusion" "$work/fusion-cache" disabled
        bench fusion-cold-b8 "$work/fusion" 120 "$bin" --batch 8 --steps 20
        bench fusion-warm-b8 "$work/fusion" 60 "$bin" --batch 8 --steps 20
        bench fusion-warm-b32 "$work/fusion" 60 "$bin" --batch 32 --steps 5
        setup "$work/mem" "$work/fusion-cache" disabled
        printf '\n[memory.logger]\nlevel = "basic"\nfile = "%s/memory.log"\n' "$work/mem" >> "$work/mem/cubecl.toml"
        bench memory-fusion-b8 "$work/mem" 45 "$bin" --batch 8 --steps 3
        cp "$work/mem/memory.log" "$work/logs/memory-fusion-b8.memory.log" 2>/dev/null
    }

    # Issue 21: the GAN's iteration on the card beside PyTorch's (the phantom study's and the
    # reference configurations), then its learning curve: the phantom study's GAN with
    # leaky_output on three seeds and the original recipe on one, every run `--until curve`.
    # The iterations follow from the measured iteration time and what is left of BUDGET_S
    # (GAN_ITERATIONS overrides; GAN_SETS adds `--set` arguments to every run; GAN_DEVICE and
    # GAN_BENCH_STEPS make a dry run elsewhere, e.g. GAN_DEVICE=cpu GAN_ITERATIONS=2).
    suite_gan() {
        local bin="$work/bin/covflow" pipe="$here/pipelines/phantom-study.yaml" dev=${GAN_DEVICE:-cuda}
        local ref="$here/scripts/gan_ref.py"
        local steps=${GAN_BENCH_STEPS:-10}
        step gan-bench-study 90 "$bin" bench gan --device "$dev" --batch 2 --width 0.25 --grid 32 64 64 --steps "$steps"
        step gan-pytorch-study 45 python3 "$ref" --device "$dev" --batch 2 --width 0.25 --grid 32 64 64 --steps "$steps"
        local sets=() set
        for set in ${GAN_SETS:-}; do sets+=(--set "$set"); done
        echo "[gan-prelude] phantoms, preprocessing and crops"
        local t0=$SECONDS
        "$bin" run "$pipe" --device "$dev" --cache "$work/c" --until gan_crops "${sets[@]}" \
            > "$work/logs/gan-prelude.log" 2>&1 || { echo "[gan-prelude] FAILED"; tail -5 "$work/logs/gan-prelude.log"; return; }
        echo "[gan-prelude] $((SECONDS - t0)) s"
        # One run at a time, the most telling first: four runs side by side on the card
        # (2026-12-04) did not finish 300 iterations each in 469 s, where one alone needs ~70 s
        # after ~30 s of kernel compilation. A run's iteration is taken as 1.5 lone ones (noise,
        # checkpoints, the curve); the iterations are chosen so that two runs fit.
        local per_it n every name seed leaky need
        per_it=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["median_s"])' \
            "$work/logs/gan-bench-study.jsonl" 2>/dev/null || echo 1)
        n=${GAN_ITERATIONS:-$(python3 -c "print(max(100, int(($deadline - $SECONDS - 240) / 2 / ($per_it * 1.5) / 100) * 100))")}
        every=$(( n / 10 > 0 ? n / 10 : 1 ))
        need=$(python3 -c "print(int($n * $per_it * 1.5) + 60)")
        echo "[gan-curves] $n iterations each (lone iteration ${per_it} s), snapshots every $every"
        mkdir -p "$work/curves"
        for name in leaky-0 original-0 leaky-1 leaky-2; do
            fits "gan-$name" "$need" || break
            seed=${name##*-}
            leaky=$([ "${name%-*}" = leaky ] && echo true || echo false)
            cp -a "$work/c" "$work/c-$name"
            local t1=$SECONDS
            timeout "$need" "$bin" run "$pipe" --device "$dev" --cache "$work/c-$name" --until curve \
                "${sets[@]}" --set params.gan_iterations="$n" --set stages.gan.with.snapshot_every="$every" \
                --set stages.gan.with.checkpoint_every="$every" --set stages.gan.with.seed="$seed" \
                --set stages.gan.with.leaky_output="$leaky" > "$work/logs/gan-$name.log" 2>&1
            echo "[gan-$name] rc=$? $((SECONDS - t1)) s"
            mkdir -p "$work/curves/$name"
            find "$work/c-$name" \( -name curve.csv -o -name history.csv -o -name gan.json \) \
                -exec cp {} "$work/curves/$name/" \;
            cat "$work/curves/$name/curve.csv" 2>/dev/null
        done
        tar -C "$work" -czf "$out/gan-curves.tar.gz" curves
        step gan-bench-reference 60 "$bin" bench gan --device "$dev" --batch 5 --width 1 --grid 32 128 128 --steps "$steps"
        step gan-pytorch-reference 30 python3 "$ref" --device "$dev" --batch 5 --width 1 --grid 32 128 128 --steps "$steps"
    }

    if [ "${SUITE:-main}" = fusion ]; then
        suite_fusion
    elif [ "${SUITE:-main}" = gan ]; then
        suite_gan
    else
        suite_main
    fi

    python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print(f"{'run':<18}{'impl':<22}{'batch':>6}{'first step s':>14}{'step ms':>10}{'infer ms':>10}{'kernels':>9}{'loss first→last':>22}")
for r in rows:
    impl = r.get("impl") or ("burn-" + r.get("device", "?") + "-" + str(r.get("conv", "?")))
    fs = r.get("first_step_s"); st = r.get("median_step_ms"); inf = r.get("median_inference_ms")
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"
    loss = "-" if r.get("loss_first") is None else f"{r['loss_first']:.3f}→{r['loss_last']:.3f}"
    note = "" if r.get("rc", 0) == 0 else f"  (rc {r['rc']}: timed out or failed after {r.get('wall_s', 0):.0f} s)"
    print(f"{r['run']:<18}{impl:<22}{r.get('batch', '-'):>6}{f(fs, 2):>14}{f(st, 2):>10}{f(inf, 2):>10}{r.get('kernels_compiled', '-'):>9}{loss:>22}{note}")
PY
    cp "$results" "$work/logs/results.jsonl"
    tar -C "$work" -czf "$out/gpu-check-logs.tar.gz" logs
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
