# Builds and runs one downstream consumer of mtrec; run by ctest as
#   cmake -D MODE=<find_package|add_subdirectory|single_header> -D WORK_DIR=... \
#         -D MTREC_SOURCE_DIR=... -D MTREC_BINARY_DIR=... -D CONSUMER_DIR=... \
#         -D CXX_COMPILER=... -D GENERATOR=... [-D THIRD_PARTY_INCLUDES=a|b] -P run_consumer.cmake
#
#   find_package      install the mtrec build tree into WORK_DIR/prefix, then
#                     configure/build consumers/find_package with CMAKE_PREFIX_PATH
#   add_subdirectory  configure/build consumers/add_subdirectory, which vendors the source tree
#   single_header     call the C++ compiler directly with only single_include/ and the
#                     third-party include directories
# Every mode then runs the program, which checks a hand-computed Linear forward/backward.

cmake_minimum_required(VERSION 3.16)

foreach(var MODE WORK_DIR MTREC_SOURCE_DIR MTREC_BINARY_DIR CONSUMER_DIR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D ${var}=... is required")
  endif()
endforeach()

# Runs a command, echoing it; stops the test with its output if it fails.
function(run_step what)
  string(REPLACE ";" " " _shown "${ARGN}")
  message(STATUS "[${MODE}] ${what}: ${_shown}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE _rc
    OUTPUT_VARIABLE _out
    ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${what} failed (exit ${_rc}):\n${_out}")
  endif()
  set(STEP_OUTPUT "${_out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(_gen_args)
if(GENERATOR)
  set(_gen_args -G "${GENERATOR}")
endif()
set(_common_cfg ${_gen_args} "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" -DCMAKE_BUILD_TYPE=Release)

if(MODE STREQUAL "find_package")
  set(_prefix "${WORK_DIR}/prefix")
  run_step("install" "${CMAKE_COMMAND}" --install "${MTREC_BINARY_DIR}" --prefix "${_prefix}")
  if(NOT EXISTS "${_prefix}/include/mtrec/mtrec.hpp")
    message(FATAL_ERROR "install did not put include/mtrec/mtrec.hpp under ${_prefix}")
  endif()
  run_step("configure" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}/find_package" -B "${WORK_DIR}/build"
           ${_common_cfg} "-DCMAKE_PREFIX_PATH=${_prefix}" "-DEXPECT_MTREC_PREFIX=${_prefix}")
  run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
  set(_app "${WORK_DIR}/build/app")

elseif(MODE STREQUAL "add_subdirectory")
  run_step("configure" "${CMAKE_COMMAND}" -S "${CONSUMER_DIR}/add_subdirectory" -B "${WORK_DIR}/build"
           ${_common_cfg} "-DMTREC_SOURCE_DIR=${MTREC_SOURCE_DIR}")
  run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
  set(_app "${WORK_DIR}/build/app")

elseif(MODE STREQUAL "single_header")
  set(_single "${MTREC_SOURCE_DIR}/single_include")
  if(NOT EXISTS "${_single}/mtrec/mtrec.hpp")
    message(FATAL_ERROR "${_single}/mtrec/mtrec.hpp is missing: run `python3 tools/amalgamate.py`")
  endif()
  set(_inc "-I${_single}")
  if(THIRD_PARTY_INCLUDES)
    string(REPLACE "|" ";" _dirs "${THIRD_PARTY_INCLUDES}")
    foreach(d IN LISTS _dirs)
      list(APPEND _inc "-I${d}")
    endforeach()
  endif()
  set(_app "${WORK_DIR}/app")
  run_step("compile" "${CXX_COMPILER}" -std=c++17 -O2 ${_inc}
           "${CONSUMER_DIR}/consumer_main.cpp" -o "${_app}")

else()
  message(FATAL_ERROR "unknown MODE '${MODE}'")
endif()

run_step("run" "${_app}")
message(STATUS "[${MODE}] ${STEP_OUTPUT}")
