#!/usr/bin/env bash
# prepare-default-data.sh: build the default corpus data/default/{train,valid}.tok
# from the World English Bible (public domain), SWORD module engWEB2015eb in
# the Debian package sword-text-web, exported with mod2imp (libsword-utils).
#
#   scripts/prepare-default-data.sh [path/to/fulcrum-data]
#
# The fulcrum-data binary is the first argument, else $FULCRUM_DATA, else
# build/src/apps/fulcrum-data under the repository root. One document per
# chapter; every 50th document goes to the validation split (fulcrum-data
# encode --valid-every 50). Idempotent: does nothing when the outputs exist
# and are newer than this script. See doc/data-format.md.
set -euo pipefail

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"
OUT_DIR="$ROOT/data/default"
MODULE="engWEB2015eb"

die() { echo "prepare-default-data: error: $*" >&2; exit 1; }

TRAIN="$OUT_DIR/train.tok"
VALID="$OUT_DIR/valid.tok"

print_counts() {  # token_count: u64 at byte offset 24 of the header
  local f
  for f in "$TRAIN" "$VALID"; do
    printf '%s: %s tokens\n' "${f#"$ROOT"/}" "$(od -An -t u8 -j 24 -N 8 "$f" | tr -d ' ')"
  done
}

if [ -f "$TRAIN" ] && [ -f "$VALID" ] && [ "$TRAIN" -nt "$SCRIPT_PATH" ] && [ "$VALID" -nt "$SCRIPT_PATH" ]; then
  echo "prepare-default-data: up to date (outputs newer than the script); nothing to do"
  print_counts
  exit 0
fi

# Binary: resolve a relative argument against the caller's directory.
BIN="${1:-${FULCRUM_DATA:-$ROOT/build/src/apps/fulcrum-data}}"
case "$BIN" in /*) ;; */*) BIN="$PWD/$BIN" ;; *) BIN="$(command -v "$BIN" || echo "$BIN")" ;; esac
[ -x "$BIN" ] || die "fulcrum-data binary not found or not executable: '$BIN' (build it, or pass its path as the first argument or in \$FULCRUM_DATA)"

command -v mod2imp >/dev/null || die "mod2imp not found (apt-get install libsword-utils)"
command -v perl >/dev/null || die "perl not found"
mkdir -p "$OUT_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

mod2imp "$MODULE" > "$TMP/web.imp" 2> "$TMP/mod2imp.err" ||
  die "mod2imp $MODULE failed (apt-get install sword-text-web libsword-utils): $(head -c 500 "$TMP/mod2imp.err")"
[ -s "$TMP/web.imp" ] || die "mod2imp $MODULE produced no output (is sword-text-web installed?)"

# Clean: one document per chapter. $$$ key lines ("Book C:V") only mark
# verses; footnotes and cross references (<note>) are dropped; titles become
# lines of their own; paragraph and poetry-line starts become line breaks;
# every other tag is removed; whitespace is collapsed within lines.
# A book's chapter 0 (title block) is prepended to its chapter 1 unless it
# is long (the translators' preface), then it is a document of its own.
perl -CSD -e "$(cat <<'PERL'
use strict; use warnings; use utf8;
my ($chapter, $doc, $verse, $pending0) = ('', '', '', '');
my $ndocs = 0;
sub clean {
  my ($t) = @_;
  $t =~ s{<[^>]*\z}{};                                  # tag cut off at the end (mod2imp caps entries near 60 kB)
  $t =~ s{<note\b(?:(?!</note>).)*\z}{}s;              # unterminated note
  $t =~ s{<note\b[^>]*/>}{}g;
  $t =~ s{<note\b.*?</note>}{\x01}gs;                  # notes: drop, remember the spot
  $t =~ s{<title\b[^>]*>(.*?)</title>}{\n$1\n}gs;       # headings on their own line
  $t =~ s{<div\b[^>]*\btype="x-p"[^>]*\bsID=[^>]*/>}{\n}g;   # paragraph start
  $t =~ s{<div\b[^>]*\bsID=[^>]*\btype="x-p"[^>]*/>}{\n}g;
  $t =~ s{<l\b[^>]*\bsID=[^>]*/>}{\n}g;                # poetry line start
  $t =~ s{<lb\b[^>]*/>}{\n}g;
  $t =~ s{<item\b[^>]*>}{\n}g;                         # list items (glossary)
  $t =~ s{<[^>]*/>}{ }g;                               # other empty tags
  $t =~ s{<[^>]*>}{}g;                                 # other tags: keep content
  $t =~ s{&amp;}{&}g; $t =~ s{&lt;}{<}g; $t =~ s{&gt;}{>}g; $t =~ s{&quot;}{"}g; $t =~ s{&apos;}{'}g;
  # A dropped note between two words separated them: keep a space there.
  $t =~ s{(?<=[^\s\x01])\x01+(?=[^\s\x01,.;:!?’”)\]—])}{ }g;
  $t =~ s{\x01}{}g;
  return $t;
}
sub tidy {  # collapse whitespace within lines, drop empty lines
  my ($t) = @_;
  my @out;
  for my $line (split /\n/, $t) {
    $line =~ s/[ \t\r\f\v]+/ /g; $line =~ s/^ //; $line =~ s/ $//;
    $line =~ s/ ([,.;:!?])/$1/g;
    push @out, $line if $line ne '';
  }
  return join("\n", @out);
}
sub flush_doc {
  my $t = tidy($doc);
  $doc = '';
  return if $t eq '';
  print "\f\n" if $ndocs++;
  print $t, "\n";
}
while (my $line = <STDIN>) {
  chomp $line;
  if ($line =~ /^\$\$\$(.*)$/) {
    my $key = $1;
    $doc .= ' ' . clean($verse) if $verse ne ''; $verse = '';
    my ($book, $ch) = $key =~ /^(.*\S)\s+(\d+):\d+$/ ? ($1, $2) : ($key, 'x');
    my $new = "$book $ch";
    if ($new ne $chapter) {
      if ($chapter =~ / 0$/) {          # finishing a chapter 0 block
        if (length(tidy($doc)) > 500) { flush_doc(); } else { $pending0 = $doc; $doc = ''; }
      } else {
        flush_doc();
      }
      if ($pending0 ne '' && $ch ne '0') {
        $doc = ($book eq ($chapter =~ /^(.*) 0$/ ? $1 : '')) ? $pending0 : '';
        $pending0 = '';
      }
      $chapter = $new;
    }
  } else {
    $verse .= ($verse eq '' ? '' : ' ') . $line;
  }
}
$doc .= ' ' . clean($verse) if $verse ne '';
flush_doc();
print STDERR "documents: $ndocs\n";
PERL
)" < "$TMP/web.imp" > "$TMP/web.txt" 2> "$TMP/perl.err" || die "cleaning failed: $(cat "$TMP/perl.err")"
cat "$TMP/perl.err"

PKG_VERSION="$(dpkg-query -W -f='${Version}' sword-text-web 2>/dev/null || echo unknown)"
cat > "$TMP/LICENSE-SOURCE.txt" <<EOF
Source:   World English Bible (WEB), with Deuterocanon, SWORD module $MODULE
          (module version $(sed -n 's/^Version=//p' /usr/share/sword/mods.d/"${MODULE,,}".conf 2>/dev/null || true))
Package:  Debian sword-text-web $PKG_VERSION, exported with mod2imp (libsword-utils)
Licence:  Public domain. "This work is not copyrighted. It is in the Public
          Domain. You may copy and publish this work freely, but you may not
          claim copyright on it." ("World English Bible" is a trademark of
          eBible.org.)
Produced: scripts/prepare-default-data.sh (markup and footnotes removed,
          one document per chapter, documents separated by a form-feed line).
Files:    web.txt (clean text), train.tok / valid.tok (byte tokenizer,
          every 50th chapter in valid.tok; doc/data-format.md).
EOF

"$BIN" encode --input "$TMP/web.txt" --train-out "$TMP/train.tok" --valid-out "$TMP/valid.tok" \
  --valid-every 50 --tokenizer byte

# Install the outputs last, so an interrupted run never looks up to date.
mv -f "$TMP/web.txt" "$OUT_DIR/web.txt"
mv -f "$TMP/LICENSE-SOURCE.txt" "$OUT_DIR/LICENSE-SOURCE.txt"
mv -f "$TMP/valid.tok" "$VALID"
mv -f "$TMP/train.tok" "$TRAIN"
touch "$VALID" "$TRAIN"
print_counts
