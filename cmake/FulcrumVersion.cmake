# FULCRUM_VERSION (project version, configure time) and FULCRUM_GIT_REVISION
# (re-read at every build by the fulcrum_git_revision target); both are stored
# in every run file.
configure_file(${CMAKE_SOURCE_DIR}/cmake/fulcrum_version.hpp.in
               ${CMAKE_BINARY_DIR}/generated/fulcrum_version.hpp @ONLY)
add_custom_target(fulcrum_git_revision ALL
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${CMAKE_SOURCE_DIR}
          -DOUTPUT=${CMAKE_BINARY_DIR}/generated/fulcrum_git_revision.hpp
          -P ${CMAKE_SOURCE_DIR}/cmake/FulcrumGitRevision.cmake
  BYPRODUCTS ${CMAKE_BINARY_DIR}/generated/fulcrum_git_revision.hpp
  COMMENT "Reading the git revision")
# also at configure time, so the header exists before any target compiles
execute_process(COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${CMAKE_SOURCE_DIR}
                -DOUTPUT=${CMAKE_BINARY_DIR}/generated/fulcrum_git_revision.hpp
                -P ${CMAKE_SOURCE_DIR}/cmake/FulcrumGitRevision.cmake)
