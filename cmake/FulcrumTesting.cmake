# Test helpers in the Cabana style: a test body is written once; CMake
# instantiates it per MPI rank count.
include(GoogleTest)

# fulcrum_add_test(NAME name SOURCES a.cpp ... LIBS lib ... [LABELS l ...])
function(fulcrum_add_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  set_tests_properties(${T_NAME} PROPERTIES
    LABELS "${T_LABELS}" ENVIRONMENT "OPENBLAS_NUM_THREADS=1;OMP_NUM_THREADS=1")
endfunction()

# fulcrum_add_mpi_test(NAME name SOURCES ... LIBS ... RANKS 1 2 4): the
# executable provides its own main() (initialising MPI) and runs once per
# rank count through mpiexec --oversubscribe.
function(fulcrum_add_mpi_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;LIBS;RANKS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest MPI::MPI_CXX)
  foreach(n ${T_RANKS})
    add_test(NAME ${T_NAME}_np${n}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n}
                     --oversubscribe --allow-run-as-root
                     $<TARGET_FILE:${T_NAME}>)
    set_tests_properties(${T_NAME}_np${n} PROPERTIES
      LABELS "mpi;${T_LABELS}" PROCESSORS ${n}
      ENVIRONMENT "OPENBLAS_NUM_THREADS=1;OMP_NUM_THREADS=1")
  endforeach()
endfunction()
