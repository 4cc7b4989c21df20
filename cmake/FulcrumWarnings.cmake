# Compiler warnings for every Fulcrum target, set in this one place (included
# by the top-level CMakeLists.txt before any target is defined, so every
# library, executable, test and benchmark gets them). The code is kept free of
# them; a new warning is a bug to fix, not noise.
add_compile_options("$<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wall;-Wextra>")
