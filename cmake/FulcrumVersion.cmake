# Records the git revision at configure time; stored in every run file.
find_package(Git QUIET)
set(FULCRUM_GIT_REVISION "unknown")
if(GIT_FOUND AND EXISTS ${CMAKE_SOURCE_DIR}/.git)
  execute_process(COMMAND ${GIT_EXECUTABLE} describe --always --dirty --abbrev=12
                  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
                  OUTPUT_VARIABLE FULCRUM_GIT_REVISION
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT FULCRUM_GIT_REVISION)
    set(FULCRUM_GIT_REVISION "unknown")
  endif()
endif()
configure_file(${CMAKE_SOURCE_DIR}/cmake/fulcrum_version.hpp.in
               ${CMAKE_BINARY_DIR}/generated/fulcrum_version.hpp @ONLY)
