# Source at the start of every device command (the GPU machine: Python 3.12, torch preinstalled, no index):
#   source scripts/device_env.sh
# Installs the carried wheels (.whl/, see scripts/device_wheels.sh) and runs the package from src/.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 CIFARLAB_CACHE=/root/cifarlab-cache HF_HUB_OFFLINE=1
cifarlab() { python3 -m cifarlab.cli "$@"; }
