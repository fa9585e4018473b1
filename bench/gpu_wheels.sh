#!/usr/bin/env bash
# What the GPU suite carries to a CUDA machine that reaches no package registry (bench/GPU.md):
#   .whl/   wheels for its Python 3.12 (manylinux x86-64) of the packages it lacks: plotly and optuna
#           (the test suite imports them) with optuna's own needs, and heavyball (SOAP);
#   .peers/ the benchmark peers from ../shared/anchors: the kfac-pytorch wheel and Distributed
#           Shampoo's source.
# Both folders are ignored by git. Run from anywhere; ANCHORS overrides ../shared/anchors (or
# ../../shared/anchors for a checkout in a folder of worktrees).
#
#   bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
anchors=${ANCHORS:-}
if [ -z "$anchors" ]; then  # ../shared beside the checkout, or beside the folder of worktrees
  for d in ../shared/anchors ../../shared/anchors; do [ -d "$d" ] && anchors=$d && break; done
fi
[ -n "$anchors" ] || { echo "no shared/anchors found beside the checkout: set ANCHORS" >&2; exit 2; }
# The GPU machine has torch, numpy, pandas, typer, rich, narwhals, packaging, PyYAML, tqdm,
# MarkupSafe, typing-extensions and opt-einsum already; these are what it lacks.
WHEELS=(plotly==7.1.0 optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 SQLAlchemy==2.1.9 Mako==1.4.3
        heavyball==3.2.1)
rm -rf .whl .peers
mkdir -p .whl .peers
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${WHEELS[@]}"
cp "$anchors"/kfac_pytorch-*.whl "$anchors"/distributed_shampoo-*.tar.gz .peers/
# The set must install there as it will (no index, no dependencies), for Python 3.12:
"$py" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --target "$(mktemp -d)" .whl/*.whl .peers/*.whl
du -sh .whl .peers
du -cb .whl/* .peers/* | tail -1 | awk '{printf "carried: %.1f MiB\n", $1 / 1048576}'
