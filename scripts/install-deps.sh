#!/usr/bin/env bash
# Installs every build, test and data dependency of Fulcrum from Debian 12
# packages. Idempotent: packages already present are skipped by apt.
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config git
  # Kokkos + Kokkos Kernels 3.4.1 (Trilinos, Serial backend)
  libtrilinos-kokkos-dev libtrilinos-kokkos-kernels-dev
  # BLAS behind Kokkos Kernels: the pthread OpenBLAS takes over libblas.so.3
  libopenblas0-pthread libopenblas-dev
  # oneDNN 2.6 matmul primitives: bf16 on AMX / AVX512-BF16 (gemm backend "onednn")
  libdnnl-dev
  # MPI and HDF5 (rank 0 alone writes the run file: serial HDF5 suffices)
  libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools
  # deck parsing, command lines, tests
  libtoml11-dev libcli11-dev libgtest-dev googletest
  # fitting and plots (fulcrum-fit)
  libceres-dev libeigen3-dev libplplot-dev plplot-driver-cairo
  # PyTorch reference for the gradient cross-check
  python3 python3-torch python3-h5py python3-numpy
  # BPE tokenizer (fulcrum-data build)
  libsentencepiece-dev sentencepiece
  # default corpus: World English Bible (public domain) via SWORD
  sword-text-web libsword-utils
  # study-corpus sources (scripts/build-study-corpus.sh, input_decks/data/)
  sword-text-kjv fortunes wordnet-base python3.11-doc perl-doc golang-1.19-src
  # single-node Slurm for the job-script tests (daemons are not started by apt)
  slurmctld slurmd slurm-client munge libpmix-dev
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep apt from starting daemons (slurmctld, munge): tests start their own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
