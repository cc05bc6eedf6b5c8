#!/usr/bin/env bash
# Every GPU figure the README's "Speed and memory" owes, in one run on a machine with CUDA:
#
#   benchmarks/device.sh [OUT_DIR]          # default results/device: one log per step, summary.txt
#   SMOKE=1 benchmarks/device.sh /tmp/smoke # each step at toy size on the CPU: checks the script
#
# Steps: training throughput against CompressAI's loop (float32, and icmflow in bfloat16), SAM
# edges in three precisions (vit_b, random weights), coded-dataset generation with workers
# sharing the GPU, and the real-data study at GPU size (studies/coco/params-gpu.yaml through
# `dvc repro`, benchmarks/study.py). DDP scaling needs several GPUs: the script names how many it
# sees. Each step has its own time limit (STEP_TIMEOUT seconds, 240 by default; the study's
# STUDY_TIMEOUT, 3600) and a failing step does not stop the others; STEPS="study" (any of train
# edges encode study) runs only those. ICMFLOW_SAMPLES must name a folder holding kodak/,
# coco-train160/ and coco-val158/ (../shared/samples here; the detectors in models/ beside it),
# and PYTHON (python3 by default) must import icmflow's dependencies (`make install` makes
# .venv/bin/python).
set -uo pipefail
out=${1:-results/device}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1

if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu
    train_args=(--N 16 --M 16 --patch 64 --batch 2 --steps 3 --repeats 1 --baseline-workers 0)
    edges_args=(--images 1 --points-per-side 2 --points-per-batch 4 --precision float32 bfloat16)
    encode_args=(--images 2 -N 16 -M 16 --workers 2)
    study_args=(--smoke)
else
    device=cuda
    train_args=(--N 128 --M 192 --patch 256 --batch 16 --steps 200)
    edges_args=(--points-per-batch 256 --precision float32 float16 bfloat16)
    encode_args=(--workers 4)
    study_args=()
    nvidia-smi -L | tee "$out/summary.txt"
fi

step() {  # step NAME ARGS...: python ARGS, its log in $out/NAME.log, its last lines in summary
    local name=$1
    shift
    case " ${STEPS:-train edges encode study} " in *" $name "*) ;; *) return ;; esac
    echo "== $name: $python $*" | tee -a "$out/summary.txt"
    timeout "${STEP_TIMEOUT:-240}" "$python" "$@" >"$out/$name.log" 2>&1
    echo "(exit $?)" >>"$out/$name.log"
    grep -v -i -e '%|' -e 'warn' "$out/$name.log" | tail -n 7 | tee -a "$out/summary.txt"
}

step train benchmarks/train.py --device "$device" "${train_args[@]}" --precision bfloat16
step edges benchmarks/edges.py --device "$device" "${edges_args[@]}"
step encode benchmarks/encode.py --device "$device" "${encode_args[@]}"
STEP_TIMEOUT=${STUDY_TIMEOUT:-3600} step study benchmarks/study.py "$out/study" "${study_args[@]}"
