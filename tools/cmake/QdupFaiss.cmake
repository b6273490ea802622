# FAISS for qdup, chosen with -DQDUP_FAISS=source|system; defines the interface target
# qdup_faiss (FAISS's C API and what it needs) that the indexer links.
#
# source (default): FAISS's C API built from Debian's own source package (`apt-get
#   source faiss`: tools/install-deps.sh adds the deb-src entry) with AVX2 kernels, by
#   the project in tools/cmake/faiss/. It is built once into QDUP_FAISS_CACHE
#   (~/.cache/qdup/faiss by default), shared by every build tree (normal, sanitizers)
#   and checkout on the machine, at the first configure that needs it: about a minute
#   on 2 cores. Two variants are installed there, the AVX2 one under
#   lib/glibc-hwcaps/x86-64-v3/, and the dynamic loader picks the one the CPU can run.
# system: Debian's generic libfaiss.a. Debian ships the C API's headers but not its
#   library, so the project's own implementation of the functions it calls
#   (indexer/faiss_c_api.cpp) is compiled instead, unless a faiss_c library is found.

set(QDUP_FAISS source CACHE STRING
    "FAISS: source (Debian's source package built with AVX2) or system (Debian's libfaiss)")
set_property(CACHE QDUP_FAISS PROPERTY STRINGS source system)
set(QDUP_FAISS_CACHE "$ENV{HOME}/.cache/qdup/faiss" CACHE PATH
    "Where QDUP_FAISS=source fetches, builds and installs FAISS (shared by build trees)")
set(QDUP_FAISS_SOURCE_DIR "" CACHE PATH
    "An already unpacked FAISS source tree for QDUP_FAISS=source (default: apt-get source faiss)")

find_package(faiss CONFIG REQUIRED)
find_package(OpenMP REQUIRED)

# Runs one step of the FAISS build, its output appended to the cache's build.log; stops
# the configure with the log's tail on failure.
function(qdup_faiss_step what)
  set(log "${QDUP_FAISS_CACHE}/build.log")
  file(APPEND "${log}" "\n=== ${what}: ${ARGN}\n")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out
                  WORKING_DIRECTORY "${QDUP_FAISS_CACHE}")
  file(APPEND "${log}" "${out}")
  if(NOT rc EQUAL 0)
    string(LENGTH "${out}" len)
    if(len GREATER 3000)
      math(EXPR from "${len} - 3000")
      string(SUBSTRING "${out}" ${from} -1 out)
    endif()
    message(FATAL_ERROR "qdup: FAISS ${what} failed (${rc}); log: ${log}\n...${out}\n"
      "Run tools/install-deps.sh (it adds the deb-src entry apt-get source needs), "
      "or configure with -DQDUP_FAISS=system.")
  endif()
endfunction()

# Fetches (unless QDUP_FAISS_SOURCE_DIR is given), configures, builds and installs the
# FAISS C API libraries into ${QDUP_FAISS_CACHE}/install, unless a stamp there says that
# the same build is already done. A file lock makes concurrent configures wait for one
# build instead of racing it.
function(qdup_faiss_build_source out_prefix)
  get_target_property(system_lib faiss IMPORTED_LOCATION_NONE)
  if(NOT system_lib)
    get_target_property(system_lib faiss LOCATION)
  endif()
  file(READ "${CMAKE_SOURCE_DIR}/tools/cmake/faiss/CMakeLists.txt" wrapper)
  # Always the system's default compilers, whatever this tree is built with (clang for
  # fuzzing): the result is a C library, and one build serves every tree.
  find_program(QDUP_FAISS_CXX NAMES c++ g++ REQUIRED)
  find_program(QDUP_FAISS_CC NAMES cc gcc REQUIRED)
  execute_process(COMMAND ${QDUP_FAISS_CXX} --version OUTPUT_VARIABLE cxx_version)
  string(SHA256 key "${wrapper}|${cxx_version}|${faiss_VERSION}|${system_lib}|${QDUP_FAISS_SOURCE_DIR}")
  set(prefix "${QDUP_FAISS_CACHE}/install")
  set(stamp "${prefix}/qdup-faiss.stamp")
  set(${out_prefix} "${prefix}" PARENT_SCOPE)
  if(EXISTS "${stamp}")
    file(READ "${stamp}" done)
    if(done STREQUAL key)
      return()
    endif()
  endif()

  file(MAKE_DIRECTORY "${QDUP_FAISS_CACHE}")
  file(LOCK "${QDUP_FAISS_CACHE}/lock" GUARD FUNCTION TIMEOUT 7200)
  if(EXISTS "${stamp}")
    file(READ "${stamp}" done)
    if(done STREQUAL key)
      return()   # another configure built it while this one waited
    endif()
  endif()

  set(src "${QDUP_FAISS_SOURCE_DIR}")
  if(NOT src)
    file(GLOB src "${QDUP_FAISS_CACHE}/src/faiss-${faiss_VERSION}")
    if(NOT src)
      message(STATUS "qdup: fetching FAISS's source package (apt-get source faiss)")
      file(REMOVE_RECURSE "${QDUP_FAISS_CACHE}/src")
      file(MAKE_DIRECTORY "${QDUP_FAISS_CACHE}/src")
      qdup_faiss_step("download" ${CMAKE_COMMAND} -E chdir "${QDUP_FAISS_CACHE}/src"
                      apt-get source faiss)
      file(GLOB src "${QDUP_FAISS_CACHE}/src/faiss-${faiss_VERSION}")
      if(NOT src)
        message(FATAL_ERROR "qdup: apt-get source faiss gave no faiss-${faiss_VERSION}/ in "
          "${QDUP_FAISS_CACHE}/src: its version must be the system libfaiss's (${faiss_VERSION})")
      endif()
    endif()
  endif()

  cmake_host_system_information(RESULT ncpu QUERY NUMBER_OF_LOGICAL_CORES)
  set(jobs $ENV{JOBS})
  if(NOT jobs)
    set(jobs ${ncpu})
  endif()
  set(launcher "")
  if(CMAKE_CXX_COMPILER_LAUNCHER)
    set(launcher "-DCMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER}")
  endif()
  message(STATUS "qdup: building FAISS ${faiss_VERSION} with AVX2 into ${QDUP_FAISS_CACHE} "
    "(once; about a minute on 2 cores, more on a busy machine; log: ${QDUP_FAISS_CACHE}/build.log)")
  file(REMOVE "${stamp}")
  # A build tree configured from another checkout's tools/cmake/faiss would refuse the
  # new source path; its objects are kept, only the cache is dropped.
  file(REMOVE "${QDUP_FAISS_CACHE}/build/CMakeCache.txt")
  qdup_faiss_step("configure" ${CMAKE_COMMAND}
    -S "${CMAKE_SOURCE_DIR}/tools/cmake/faiss" -B "${QDUP_FAISS_CACHE}/build"
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${QDUP_FAISS_CXX}
    -DCMAKE_C_COMPILER=${QDUP_FAISS_CC} ${launcher}
    -DCMAKE_INSTALL_PREFIX=${prefix} -DFAISS_SOURCE_DIR=${src} -DFAISS_SYSTEM_LIB=${system_lib}
    -DFAISS_OPT_LEVEL=avx2 -DFAISS_ENABLE_C_API=ON -DFAISS_ENABLE_GPU=OFF
    -DFAISS_ENABLE_PYTHON=OFF -DBUILD_TESTING=OFF)
  qdup_faiss_step("build" ${CMAKE_COMMAND} --build "${QDUP_FAISS_CACHE}/build" -j ${jobs})
  file(REMOVE_RECURSE "${prefix}")
  qdup_faiss_step("install" ${CMAKE_COMMAND} --install "${QDUP_FAISS_CACHE}/build")
  file(WRITE "${stamp}" "${key}")
endfunction()

if(QDUP_FAISS STREQUAL "source")
  qdup_faiss_build_source(QDUP_FAISS_PREFIX)
  message(STATUS "qdup: FAISS C API from ${QDUP_FAISS_PREFIX}/lib (AVX2 variant in glibc-hwcaps/x86-64-v3)")
  add_library(qdup_faiss INTERFACE)
  target_include_directories(qdup_faiss SYSTEM INTERFACE "${QDUP_FAISS_PREFIX}/include")
  target_link_libraries(qdup_faiss INTERFACE "${QDUP_FAISS_PREFIX}/lib/libfaiss_c.so")
  target_compile_definitions(qdup_faiss INTERFACE QDUP_FAISS_SOURCE=1)
elseif(QDUP_FAISS STREQUAL "system")
  find_library(FAISS_C_LIB faiss_c)
  if(FAISS_C_LIB)
    message(STATUS "qdup: using FAISS C API library ${FAISS_C_LIB}")
    add_library(qdup_faiss INTERFACE)
    target_link_libraries(qdup_faiss INTERFACE ${FAISS_C_LIB} faiss)
  else()
    message(STATUS "qdup: no faiss_c library; building indexer/faiss_c_api.cpp")
    add_library(qdup_faiss STATIC ${CMAKE_SOURCE_DIR}/indexer/faiss_c_api.cpp)
    target_compile_options(qdup_faiss PRIVATE -Wall -Wextra)
    target_link_libraries(qdup_faiss PUBLIC faiss OpenMP::OpenMP_CXX)
  endif()
else()
  message(FATAL_ERROR "QDUP_FAISS=${QDUP_FAISS}: expected source or system")
endif()
