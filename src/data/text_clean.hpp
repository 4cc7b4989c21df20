// text_clean.hpp: per-source text cleaning (doc/data.md).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace fulcrum {

// The cleaning every document gets: valid UTF-8 (each invalid byte becomes
// U+FFFD), CR LF and lone CR become LF, control characters other than TAB and
// LF are removed (so no form feed survives), trailing blanks are stripped from
// every line, runs of more than two empty lines are collapsed to two, leading
// and trailing empty lines are dropped, and a non-empty result ends in "\n".
// Whitespace-only documents become "".
std::string clean_document(std::string_view text);

// mod2imp output of an OSIS SWORD module ("$$$Book C:V" key lines followed by
// the entry) -> one document per chapter: notes and cross references dropped,
// titles, paragraphs and poetry lines on lines of their own, every other tag
// removed, entities decoded, blanks collapsed within lines. A short chapter-0
// block (book title) is prepended to the book's first chapter.
std::vector<std::string> osis_imp_to_chapters(std::string_view imp);

// A fortune file: entries separated by lines holding only "%".
std::vector<std::string> split_fortunes(std::string_view text);

// WordNet data.* file -> documents of up to `per_doc` synsets, one line per
// synset "word, other word: gloss". Licence-header lines (leading blanks) are
// skipped.
std::vector<std::string> wordnet_glosses(std::string_view data, std::size_t per_doc);

// Plain Old Documentation -> text: commands become headings / items, the
// formatting codes (B<..>, C<< .. >>, L<text|target>, E<gt>, ...) are
// resolved, verbatim blocks are kept.
std::string pod_to_text(std::string_view pod);

}  // namespace fulcrum
