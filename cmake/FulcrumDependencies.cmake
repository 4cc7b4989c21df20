# Dependency discovery. Every optional piece is switched by a FULCRUM_ENABLE_*
# option; required pieces fail with a message naming the Debian package.

find_package(MPI REQUIRED COMPONENTS C CXX)
find_package(HDF5 REQUIRED COMPONENTS C HL)
add_library(fulcrum_hdf5 INTERFACE)
target_include_directories(fulcrum_hdf5 INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(fulcrum_hdf5 INTERFACE ${HDF5_HL_LIBRARIES} ${HDF5_LIBRARIES})
target_compile_definitions(fulcrum_hdf5 INTERFACE ${HDF5_DEFINITIONS})

# toml11 (libtoml11-dev, header-only) and CLI11 (libcli11-dev, header-only)
find_package(toml11 QUIET)
if(NOT toml11_FOUND)
  find_path(TOML11_INCLUDE_DIR toml.hpp REQUIRED)
  add_library(toml11::toml11 INTERFACE IMPORTED)
  target_include_directories(toml11::toml11 INTERFACE ${TOML11_INCLUDE_DIR})
endif()
find_package(CLI11 QUIET)
if(NOT CLI11_FOUND)
  find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 INTERFACE ${CLI11_INCLUDE_DIR})
endif()

if(FULCRUM_ENABLE_TRAINER)
  # Kokkos: Debian's Trilinos 3.4.1 (Serial) by default, or a user Kokkos 4.x/5.x
  # via -DKokkos_ROOT=... (e.g. with the CUDA backend).
  find_package(Kokkos REQUIRED)
  if(Kokkos_INCLUDE_DIRS AND TARGET Kokkos::kokkos)
    # Debian's Trilinos Kokkos lists a non-existent /usr/lib/include on its
    # imported target, which makes CMake refuse to generate: replace it.
    get_target_property(_kk_inc Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
    if(_kk_inc MATCHES "/usr/lib/include")
      set_target_properties(Kokkos::kokkos PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${Kokkos_INCLUDE_DIRS}")
    endif()
  endif()
  # Kokkos Kernels: a user install exports Kokkos::kokkoskernels; Debian's
  # TriBITS package exports trilinos_kokkoskernels.
  find_package(KokkosKernels REQUIRED)
  add_library(fulcrum_kokkos INTERFACE)
  if(TARGET Kokkos::kokkoskernels)
    target_link_libraries(fulcrum_kokkos INTERFACE Kokkos::kokkoskernels Kokkos::kokkos)
  elseif(TARGET trilinos_kokkoskernels)
    target_link_libraries(fulcrum_kokkos INTERFACE trilinos_kokkoskernels Kokkos::kokkos)
    if(KokkosKernels_INCLUDE_DIRS)
      target_include_directories(fulcrum_kokkos INTERFACE ${KokkosKernels_INCLUDE_DIRS})
    endif()
  else()
    message(FATAL_ERROR "KokkosKernels found but exports no known target")
  endif()
  # Back ends that need extra libraries (NCCL) are detected, never required.
  # The CUDA toolkit's own copy of NCCL (e.g. /usr/local/cuda/lib) is searched too.
  if(Kokkos_ENABLE_CUDA OR Kokkos_DEVICES MATCHES "CUDA")
    find_package(CUDAToolkit QUIET)
    find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib)
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    if(NCCL_LIBRARY AND NCCL_INCLUDE_DIR)
      set(FULCRUM_HAVE_NCCL ON)
    endif()
  endif()
  option(FULCRUM_ENABLE_NCCL "NCCL token dispatcher (CUDA builds)" ${FULCRUM_HAVE_NCCL})
  if(FULCRUM_ENABLE_NCCL AND (Kokkos_ENABLE_CUDA OR Kokkos_DEVICES MATCHES "CUDA") AND NOT FULCRUM_HAVE_NCCL)
    message(FATAL_ERROR "FULCRUM_ENABLE_NCCL: NCCL not found (set NCCL_LIBRARY and NCCL_INCLUDE_DIR)")
  endif()
endif()
