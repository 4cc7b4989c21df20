#!/usr/bin/env bash
# encode-throughput.sh: encode throughput (MB of text per second) of the bpe
# tokenizer on the study corpus (input_decks/data/study.toml), on N threads.
#
#   bench/data/encode-throughput.sh [path/to/fulcrum-data] [threads=2]
#
# Builds the study corpus into a temporary directory (extraction, tokenizer
# training, encoding), prints the build's timing lines and the encode
# throughput, and removes the temporary corpus.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-${FULCRUM_DATA:-$ROOT/build/src/apps/fulcrum-data}}"
THREADS="${2:-2}"
[ -x "$BIN" ] || { echo "encode-throughput: fulcrum-data not found: '$BIN'" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$BIN" build "$ROOT/input_decks/data/study.toml" --out "$TMP/study" --threads "$THREADS" --quiet > "$TMP/log"
grep -E '^(text_bytes|train_tokens|valid_tokens|extract_s|tokenizer_s|encode_s|total_s) =' "$TMP/log"
mbs="$(sed -n 's/^encode_mb_per_s = //p' "$TMP/log")"
echo "encode throughput: ${mbs} MB/s of text (study corpus, ${THREADS} threads, $(nproc) cores)"
