#!/usr/bin/env bash
# Download, on a machine with PyPI, what tests/gpu/verify.sh installs on the GPU machine (no registry there):
# the packages its image lacks (tests/gpu/README.md), for its Python 3.12 on x86-64, into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl "$@"; }
get bitsandbytes==0.50.2 trl==1.16.0 liger-kernel==0.8.5 datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18 \
    pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2 hjson==3.1.0
# DeepSpeed is an sdist: built on the GPU machine without its ops (they JIT-compile there when used).
python3 -m pip download -q --no-deps --no-binary=:all: -d .whl deepspeed==0.19.8
du -sh .whl
