// deck_messages.hpp: the one-line, located messages of every deck error
// (input decks and sweep decks), and the near-miss suggestions they carry.
//
//     <file>:<line>: [<section>] <key>: <what is wrong>
//
// Deck text quoted in a message is sanitised (control characters and bytes
// that are not UTF-8 escaped, long pieces cut), so a message is always one
// printable line whatever the deck holds (doc/input-decks.md, "Error messages").
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace fulcrum {

// The file name of settings given on the command line (--set).
inline constexpr const char* kSetFile = "--set";

// Text made safe for a one-line message: \n and \r escaped as "\n" and "\r",
// other control characters (< 0x20, 0x7f) and bytes that are not valid UTF-8
// as \xNN. Printable, valid UTF-8, and sanitising it again changes nothing.
// With max_chars > 0 at most that many characters are kept (an escape counts
// as its length), the last three being "..." when the text was cut.
std::string sanitize(const std::string& text, std::size_t max_chars = 0);

// Deck text quoted in a message: sanitised and cut at 80 characters.
std::string excerpt(const std::string& text);

// "<file>:<line>: [<section>] <key>: <message>"; ":<line>" left out when
// line is 0, "[<section>] <key>: " when key is empty; a key without a dot is
// a section ("[<section>]: ").
std::string format_message(const std::string& file, int line, const std::string& dotted_key,
                           const std::string& message);

// Closest valid name for a near-miss (edit distance, about one edit per four
// characters, case-insensitive), "" if none is close.
std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates);

// "unknown key 'x'; did you mean 'y'?" or, with no near miss, "unknown key
// 'x' (valid keys: a, b)"; what names the kind of thing ("key", "section").
std::string unknown_name_message(const std::string& what, const std::string& name,
                                 const std::vector<std::string>& valid);

// "a, b, c"
std::string join_names(const std::vector<std::string>& names, const char* separator = ", ");

}  // namespace fulcrum
