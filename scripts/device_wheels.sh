#!/usr/bin/env bash
# Download the py3.12 wheels the GPU machine lacks (it has torch, accelerate, transformers, huggingface_hub,
# timm, pyarrow, pandas, ... but not datasets, pydantic or pytest) into .whl/, which device calls carry.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && { grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.3 pydantic_core==2.50.4 \
  annotated-types==0.7.0 typing-inspection==0.4.2 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
ls -la .whl
