// toml_input.hpp: TOML text -> toml::value for every deck Fulcrum reads
// (input decks, sweep decks), with located errors (DeckError: file, line).
//
// The project needs toml11 3.7 (Debian 12's libtoml11-dev; pinned in
// cmake/FulcrumDependencies.cmake). Three of its behaviours are handled here:
// it recurses without limit (deep nesting overflows the stack) and is slow on
// some huge inputs, so input past the limits of doc/input-decks.md ("Limits")
// is refused before it parses; its errors are multi-line texts, turned into
// one located line; and it saturates or wraps integer literals that do not
// fit in 64 bits, so integers are read again from the literal as written.
#pragma once

#include <toml.hpp>

#include <cstdint>

static_assert(TOML11_VERSION_MAJOR == 3 && TOML11_VERSION_MINOR >= 7,
              "the deck reader needs toml11 3.x from 3.7 (cmake/FulcrumDependencies.cmake)");
#include <string>

namespace fulcrum {

// Parses a deck. Throws DeckError(path, line, key, ...) for input past the
// limits, TOML syntax errors (quoting the offending line), and duplicate keys
// and sections (naming the key and the line it was first given on).
toml::value parse_toml_deck(const std::string& text, const std::string& path);

// The first limit `text` breaks, as (line, message); false if none.
bool breaks_toml_limits(const std::string& text, int* line, std::string* message);

// 1-based line of a value in its deck (0 if unknown).
int line_of(const toml::value& v);

// The value's text as written in the deck (sanitised, at most 40 characters),
// "" when toml11 has no location for it.
std::string written_text(const toml::value& v);

// "integer", "float", "string", "array", "table", ...
const char* toml_type_name(toml::value_t type);
// "an integer", "a float (1.5)", ...: the type of v with its text as written.
std::string toml_type_with_text(const toml::value& v);

// The integer `v` as written in the deck; false if the literal does not fit
// in a signed 64-bit integer (toml11 3.7 would have saturated or wrapped it).
bool exact_integer(const toml::value& v, std::int64_t* value);

}  // namespace fulcrum
