#!/usr/bin/env bash
# The figures of README "Distil your own model": a digits teacher (TEACHER, a moskd checkpoint)
# saved as safetensors and ONNX, each imported by `moskd pipeline --teacher-from`, end to end.
#   bash docs/results/imported-teacher/run.sh TEACHER WORK_DIR
set -u
TEACHER=$1; W=$2
python docs/results/imported-teacher/make_sources.py "$TEACHER" "$W/src" || exit 1
moskd pipeline --dataset digits --run-dir "$W/safetensors" --teacher-from "$W/src/teacher.safetensors" \
    --teacher-arch resnet50 --teacher-config "$W/src/teacher.json" --limit 200 --epochs 1 --device cpu \
  && moskd pipeline --dataset digits --run-dir "$W/onnx" --teacher-from "$W/src/teacher.onnx" \
    --teacher-config "$W/src/teacher.json" --limit 200 --epochs 1 --device cpu
echo "pipelines exit $?"
