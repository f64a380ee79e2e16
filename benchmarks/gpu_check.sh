#!/usr/bin/env bash
# One command on one H100/H200: a CUDA smoke test, then the whole Fashion-MNIST pipeline without
# baselines (configs/fashion-mnist-gpu.yaml, the full training set), then one small result file.
#
#   bash benchmarks/gpu_check.sh --out DIR             # the real run (target: <= 9 min wall)
#   bash benchmarks/gpu_check.sh --smoke --out DIR     # a few batches of every step; fine on a CPU
#
# Options: --data-dir DIR (the four Fashion-MNIST .gz files), --device auto|cpu|cuda|cuda:N,
#          --python PATH (the interpreter to use), --config FILE (default configs/fashion-mnist-gpu.yaml),
#          --smoke-dataset fashion-mnist|digits (default: fashion-mnist when its files are found, else digits),
#          --limit N (with --smoke: images per split, default 48; every stage runs 1 epoch).
# Writes DIR/gpu_check.json: device name, torch version, the smoke checks, per-stage seconds,
# accuracies (from the run's report.json) and pass/fail against the targets; DIR/smoke.json (the
# CUDA checks) and DIR/run/ (the run directory). Exit status: 0 done (and, unless --smoke, every
# target met), 3 done but a target missed, anything else a step failed.
#
# Bare machines: the script runs from a copy of the working tree. The interpreter is --python, else
# $MOSKD_PYTHON, else the tree's .venv, else python3 if it already has moskd's dependencies (the GPU
# machine's image has torch, torchvision, timm, scikit-learn, ...; none are installed then), else a
# new .venv with `pip install torch==2.14.1 torchvision==0.29.1 && pip install -e .` (needs PyPI;
# with $PIP_FIND_LINKS pointing at carried wheels, add PIP_NO_INDEX=1). The project runs from the
# tree through PYTHONPATH, so no install of moskd itself is needed.
# Data: a machine without network cannot download Fashion-MNIST, so the caller carries the four
# official files (~30 MB gzip) next to the tree, e.g. on the machine that sends it:
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
# (data/ is git-ignored: carry it, e.g. the device tool's carry: ["data/fashion-mnist"]). Looked for
# in --data-dir, data/fashion-mnist, data (flat or torchvision's FashionMNIST/raw) and
# /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), in that order.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMOKE=0 OUT="" DATA_DIR="" DEVICE=auto PY="${MOSKD_PYTHON:-}" CONFIG="$REPO/configs/fashion-mnist-gpu.yaml"
SMOKE_DATASET="" LIMIT=48
# the targets (issue 22): top-1 on the official test set
T_TEACHER=0.945 T_DENSENET=0.945 T_GOOGLENET=0.940 T_WALL=540

die() { echo "gpu_check: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --data-dir) DATA_DIR="${2:?--data-dir needs a directory}"; shift ;;
    --device) DEVICE="${2:?--device needs a value}"; shift ;;
    --python) PY="${2:?--python needs a path}"; shift ;;
    --config) CONFIG="${2:?--config needs a file}"; shift ;;
    --limit) LIMIT="${2:?--limit needs a number}"; shift ;;
    --smoke-dataset) SMOKE_DATASET="${2:?--smoke-dataset needs fashion-mnist or digits}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$OUT" ] || die "--out DIR is required"
[ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
log() { echo "gpu_check [$(( $(date +%s) - START ))s]: $*"; }

# ---------------------------------------------------------------- interpreter
DEPS="import torch, torchvision, timm, numpy, sklearn, tqdm, matplotlib, yaml, PIL"
probe() { "$1" -c "$DEPS; print(torch.__version__, int(torch.cuda.is_available()))" 2>/dev/null; }
if [ -z "$PY" ] && [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; fi
if [ -z "$PY" ] && command -v python3 >/dev/null && INFO="$(probe python3)"; then PY="$(command -v python3)"; fi
if [ -z "$PY" ]; then
  log "no interpreter with moskd's dependencies: creating $REPO/.venv"
  command -v python3 >/dev/null || die "no python3 on this machine; pass --python PATH"
  if python3 -c "import torch" 2>/dev/null; then   # keep the machine's torch (its CUDA build)
    python3 -m venv --system-site-packages "$REPO/.venv"
  else
    python3 -m venv "$REPO/.venv"
    "$REPO/.venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  fi
  "$REPO/.venv/bin/pip" install -q -e "$REPO"
  PY="$REPO/.venv/bin/python"
fi
[ -n "${INFO:-}" ] || INFO="$(probe "$PY")" || die "$PY lacks moskd's dependencies ($DEPS); pass --python PATH or install them"
read -r TORCH_VERSION HAS_CUDA <<<"$INFO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$REPO"
log "python $PY (torch $TORCH_VERSION, CUDA $([ "$HAS_CUDA" = 1 ] && echo yes || echo no))"

# ---------------------------------------------------------------- data
has_fashion() { [ -f "$1/train-images-idx3-ubyte.gz" ] || [ -f "$1/train-images-idx3-ubyte" ] \
  || [ -f "$1/FashionMNIST/raw/train-images-idx3-ubyte.gz" ]; }
FOUND=""
for d in ${DATA_DIR:+"$DATA_DIR"} "$REPO/data/fashion-mnist" "$REPO/data" /usr/share/datasets/fashion-mnist; do
  if has_fashion "$d"; then FOUND="$d"; break; fi
done
[ -z "$DATA_DIR" ] || [ "$FOUND" = "$DATA_DIR" ] || die "--data-dir $DATA_DIR: no Fashion-MNIST files there"
DATASET=fashion-mnist
if [ "$SMOKE" = 1 ]; then
  DATASET="${SMOKE_DATASET:-$([ -n "$FOUND" ] && echo fashion-mnist || echo digits)}"
  case "$DATASET" in fashion-mnist|digits) ;; *) die "--smoke-dataset $DATASET: choose fashion-mnist or digits" ;; esac
fi
if [ "$DATASET" = fashion-mnist ] && [ -z "$FOUND" ]; then
  die "Fashion-MNIST files not found (looked in --data-dir, data/fashion-mnist, data, /usr/share/datasets/fashion-mnist); copy the four .gz files to data/fashion-mnist and carry that folder"
fi
log "dataset $DATASET${FOUND:+ from $FOUND}"

# ---------------------------------------------------------------- 1. CUDA smoke
SMOKE_ARGS=(--out "$OUT/smoke.json" --device "$DEVICE")
if [ "$HAS_CUDA" != 1 ]; then
  SMOKE_ARGS+=(--compile-backend aot_eager)   # inductor's C++ builds take minutes on a small CPU
fi
T0=$(date +%s)
"$PY" benchmarks/gpu_smoke.py "${SMOKE_ARGS[@]}"
SMOKE_S=$(( $(date +%s) - T0 ))
log "smoke checks passed in ${SMOKE_S}s"

# ---------------------------------------------------------------- 2. the pipeline
RUN="$OUT/run"
PIPE=(--dataset "$DATASET" --config "$CONFIG" --run-dir "$RUN" --device "$DEVICE" --no-baselines --keep-last no)
[ -z "$FOUND" ] || PIPE+=(--data-dir "$FOUND")
[ "$SMOKE" = 0 ] || PIPE+=(--limit "$LIMIT" --epochs 1)
T0=$(date +%s)
"$PY" -m moskd.cli pipeline "${PIPE[@]}" 2>&1 | tee "$OUT/pipeline.log"
PIPE_S=$(( $(date +%s) - T0 ))
log "pipeline done in ${PIPE_S}s"

# ---------------------------------------------------------------- 3. the result file
set +e
"$PY" - "$OUT" "$RUN" "$SMOKE" "$SMOKE_S" "$PIPE_S" "$START" "$T_TEACHER" "$T_DENSENET" "$T_GOOGLENET" "$T_WALL" \
  "$DATASET" "$CONFIG" <<'EOF'
import json, sys, time
from pathlib import Path

out, run = Path(sys.argv[1]), Path(sys.argv[2])
smoke, smoke_s, pipe_s, start = sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
targets = {"teacher": float(sys.argv[7]), "densenet121": float(sys.argv[8]), "googlenet": float(sys.argv[9])}
wall_target, dataset, config = int(sys.argv[10]), sys.argv[11], sys.argv[12]
checks = json.loads((out / "smoke.json").read_text())
report = json.loads((run / "report.json").read_text())
models = report["models"]
accuracy = {name: m.get("accuracy") for name, m in models.items()}
accuracy["routed"] = report.get("routed", {}).get("accuracy")
if isinstance(report.get("policy"), dict):
    accuracy["policy"] = report["policy"].get("accuracy")
wall = int(time.time()) - start
passed = {name: (accuracy.get(name) is not None and accuracy[name] >= t) for name, t in targets.items()}
result = {
    "mode": "smoke" if smoke else "full", "dataset": dataset, "config": Path(config).name,
    "num_test_images": report.get("num_images"),
    "device": checks.get("device"), "device_name": checks.get("device_name"),
    "torch": checks.get("torch"), "cuda_runtime": checks.get("cuda_runtime"),
    "smoke_ok": checks.get("ok"), "smoke_checks": {k: v.get("ok") for k, v in checks["checks"].items()},
    "compile_first_step_s": checks["checks"].get("compile", {}).get("first_step_s"),
    "seconds": {"smoke": smoke_s, "pipeline": pipe_s, "wall": wall,
                "stages": json.loads((run / "pipeline_timings.json").read_text())},
    "accuracy": accuracy, "targets": {**targets, "wall_s": wall_target},
    "passed": None if smoke else {**passed, "wall": wall <= wall_target},
}
result["all_passed"] = None if smoke else all(result["passed"].values())
(out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
sys.exit(0 if smoke or result["all_passed"] else 3)
EOF
CODE=$?
set -e
log "result: $OUT/gpu_check.json (exit $CODE)"
exit $CODE
