#!/usr/bin/env bash
# The GPU evidence in one command (bench/GPU.md): every stage of bench/gpu_suite.py under its time
# limit, packed into PACK_DIR (gpu-suite.tar.gz, summary.txt, console.log).
#
#   bash bench/gpu_suite.sh "$OUT"                 # on the CUDA machine, with .whl and .peers carried
#   bash bench/gpu_suite.sh runs/rehearsal --rehearse   # the same stages at tiny sizes on a CPU
#
# PYTHON picks the interpreter (default python3); the project runs from this checkout (PYTHONPATH),
# no install needed.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=${1:?usage: bash bench/gpu_suite.sh PACK_DIR [--rehearse] [gpu_suite.py options]}
shift
mkdir -p "$pack"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"${PYTHON:-python3}" bench/gpu_suite.py --pack "$pack" "$@" 2>&1 | tee "$pack/console.log"
