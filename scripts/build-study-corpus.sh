#!/usr/bin/env bash
# build-study-corpus.sh: build the "study" corpus data/study/ (about 114 MB of
# text: books, reference, technical docs and code; BPE tokenizer, 4096
# pieces) from Debian packages, with fulcrum-data build and the spec
# input_decks/data/study.toml. See doc/data.md.
#
#   scripts/build-study-corpus.sh [path/to/fulcrum-data] [threads]
#
# The binary is the first argument, else $FULCRUM_DATA, else
# build/src/apps/fulcrum-data; threads default to the number of cores.
# Missing packages are named (with the apt-get line) before anything is built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPEC="$ROOT/input_decks/data/study.toml"
BIN="${1:-${FULCRUM_DATA:-$ROOT/build/src/apps/fulcrum-data}}"
THREADS="${2:-$(nproc)}"
case "$BIN" in /*) ;; */*) BIN="$PWD/$BIN" ;; *) BIN="$(command -v "$BIN" || echo "$BIN")" ;; esac
die() { echo "build-study-corpus: error: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "fulcrum-data binary not found or not executable: '$BIN' (build it, or pass its path)"

PACKAGES=(sword-text-web sword-text-kjv libsword-utils fortunes wordnet-base python3.11-doc
          perl-doc golang-1.19-src)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] || die "missing packages: ${missing[*]} (apt-get install ${missing[*]})"

start=$(date +%s)
"$BIN" build "$SPEC" --out "$ROOT/data/study" --threads "$THREADS"
echo "build-study-corpus: data/study built in $(( $(date +%s) - start )) s"
