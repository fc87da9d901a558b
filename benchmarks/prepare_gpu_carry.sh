#!/usr/bin/env bash
# Wheels the GPU image lacks (.whl/) and a copy of the benchmark datasets (.gpu_data/), both
# git-ignored, for `bash benchmarks/gpu.sh` on a lent GPU machine that has no network.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 tensorboardx==2.6.5 pooch==1.9.0 \
  portpicker==1.6.0 platformdirs==4.14.8
mkdir -p .gpu_data/amazon-sports
cp -r ../shared/data/ml-100k .gpu_data/
cp ../shared/data/amazon-sports/Sports_and_Outdoors.txt .gpu_data/amazon-sports/
du -sh .whl .gpu_data
