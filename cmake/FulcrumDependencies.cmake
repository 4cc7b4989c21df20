# Dependency discovery. Every optional piece is switched by a FULCRUM_ENABLE_*
# option; required pieces fail with a message naming the Debian package.

find_package(MPI REQUIRED COMPONENTS C CXX)
find_package(HDF5 REQUIRED COMPONENTS C HL)
add_library(fulcrum_hdf5 INTERFACE)
target_include_directories(fulcrum_hdf5 INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(fulcrum_hdf5 INTERFACE ${HDF5_HL_LIBRARIES} ${HDF5_LIBRARIES})
target_compile_definitions(fulcrum_hdf5 INTERFACE ${HDF5_DEFINITIONS})

# toml11 (libtoml11-dev, header-only) and CLI11 (libcli11-dev, header-only).
# toml11 3.x from 3.7 (Debian 12: 3.7.1): the deck reader relies on 3.7's
# API, error texts and integer parsing (src/deck/toml_input.hpp); toml11 4
# changed all three and is not supported.
find_package(toml11 3.7 QUIET)
if(NOT toml11_FOUND)
  find_path(TOML11_INCLUDE_DIR toml.hpp REQUIRED)
  file(STRINGS ${TOML11_INCLUDE_DIR}/toml.hpp _toml11_version_lines REGEX "define TOML11_VERSION_(MAJOR|MINOR)")
  string(REGEX MATCH "MAJOR ([0-9]+)" _m "${_toml11_version_lines}")
  set(_toml11_major ${CMAKE_MATCH_1})
  string(REGEX MATCH "MINOR ([0-9]+)" _m "${_toml11_version_lines}")
  set(_toml11_minor ${CMAKE_MATCH_1})
  if(NOT _toml11_major STREQUAL "3" OR _toml11_minor LESS 7)
    message(FATAL_ERROR "toml11 3.7 or a later 3.x is required (found '${_toml11_major}.${_toml11_minor}' in "
                        "${TOML11_INCLUDE_DIR}; Debian: apt-get install libtoml11-dev)")
  endif()
  set(toml11_VERSION ${_toml11_major}.${_toml11_minor})
  add_library(toml11::toml11 INTERFACE IMPORTED)
  target_include_directories(toml11::toml11 INTERFACE ${TOML11_INCLUDE_DIR})
endif()
message(STATUS "toml11 ${toml11_VERSION} (3.x from 3.7 required)")
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
  # Kokkos 5 requires C++20 (4.x and Debian's 3.4: C++17).
  if(Kokkos_VERSION VERSION_GREATER_EQUAL 5.0 AND CMAKE_CXX_STANDARD LESS 20)
    message(STATUS "Kokkos ${Kokkos_VERSION} needs C++20: CMAKE_CXX_STANDARD raised from ${CMAKE_CXX_STANDARD} to 20")
    set(CMAKE_CXX_STANDARD 20)
  endif()
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

  # gemm backends (src/model/gemm.hpp). oneDNN (libdnnl-dev): host matrix
  # products in fp32 and bf16; on by default when found in a host build.
  set(_fulcrum_cuda OFF)
  if(Kokkos_ENABLE_CUDA OR Kokkos_DEVICES MATCHES "CUDA")
    set(_fulcrum_cuda ON)
  endif()
  # Debian's dnnl-config.cmake requires OpenCL development files (its library
  # is built with the OpenCL GPU runtime), which the CPU path never uses: find
  # the header and the library directly instead.
  find_path(DNNL_INCLUDE_DIR dnnl.hpp PATH_SUFFIXES oneapi/dnnl)
  find_library(DNNL_LIBRARY dnnl)
  set(dnnl_FOUND OFF)
  if(DNNL_INCLUDE_DIR AND DNNL_LIBRARY)
    set(dnnl_FOUND ON)
    if(NOT TARGET DNNL::dnnl)
      add_library(DNNL::dnnl UNKNOWN IMPORTED)
      set_target_properties(DNNL::dnnl PROPERTIES IMPORTED_LOCATION "${DNNL_LIBRARY}"
                                                  INTERFACE_INCLUDE_DIRECTORIES "${DNNL_INCLUDE_DIR}")
    endif()
  endif()
  set(_fulcrum_onednn_default OFF)
  if(dnnl_FOUND AND NOT _fulcrum_cuda)
    set(_fulcrum_onednn_default ON)
  endif()
  option(FULCRUM_ENABLE_ONEDNN "oneDNN gemm backend (host builds, libdnnl-dev)" ${_fulcrum_onednn_default})
  if(FULCRUM_ENABLE_ONEDNN AND NOT dnnl_FOUND)
    message(FATAL_ERROR "FULCRUM_ENABLE_ONEDNN: oneDNN not found (Debian: libdnnl-dev; or set dnnl_DIR)")
  endif()
  if(FULCRUM_ENABLE_ONEDNN AND _fulcrum_cuda)
    message(FATAL_ERROR "FULCRUM_ENABLE_ONEDNN contradicts the installed Kokkos: it is built with CUDA, whose "
                        "buffers live on the GPU; oneDNN computes on the host. Use the cublas backend.")
  endif()
  # cuBLAS (bf16 tensor-core products): CUDA Kokkos builds only.
  option(FULCRUM_ENABLE_CUBLAS "cuBLAS gemm backend (CUDA Kokkos builds)" ${_fulcrum_cuda})
  if(FULCRUM_ENABLE_CUBLAS)
    if(NOT _fulcrum_cuda)
      message(FATAL_ERROR "FULCRUM_ENABLE_CUBLAS needs a Kokkos built with CUDA (-DKokkos_ROOT=...)")
    endif()
    find_package(CUDAToolkit REQUIRED)
  endif()
  message(STATUS "Fulcrum gemm backends: kokkos; onednn=${FULCRUM_ENABLE_ONEDNN}; cublas=${FULCRUM_ENABLE_CUBLAS}")
endif()
