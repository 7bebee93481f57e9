# CTest script for `memfit probe` (cmake -DMEMFIT=path/to/memfit -P probe_cli_test.cmake).
# Whether a GPU is present is decided by `nvidia-smi -L` listing one: without it, `memfit probe` must
# exit 3 and say why; with it, the probe really runs and must exit 0 (fits) or 1 (does not fit).
if(NOT MEMFIT)
  message(FATAL_ERROR "give -DMEMFIT=path/to/memfit")
endif()

set(have_gpu FALSE)
find_program(NVIDIA_SMI nvidia-smi)
if(NVIDIA_SMI)
  execute_process(COMMAND ${NVIDIA_SMI} -L RESULT_VARIABLE smi_rc OUTPUT_VARIABLE smi_out ERROR_QUIET)
  if(smi_rc EQUAL 0 AND smi_out MATCHES "GPU [0-9]+:")
    set(have_gpu TRUE)
  endif()
endif()

# 1. A small model at a small batch.
execute_process(COMMAND ${MEMFIT} probe question_cnn --batch 8
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(have_gpu)
  if(NOT (rc EQUAL 0 OR rc EQUAL 1))
    message(FATAL_ERROR "with a GPU, 'memfit probe' should exit 0 or 1, got ${rc}\n${out}\n${err}")
  endif()
  if(NOT out MATCHES "Replay of the allocation plan")
    message(FATAL_ERROR "with a GPU, 'memfit probe' printed no replay:\n${out}\n${err}")
  endif()
else()
  if(NOT rc EQUAL 3)
    message(FATAL_ERROR "without a GPU, 'memfit probe' should exit 3, got ${rc}\n${out}\n${err}")
  endif()
  if(NOT err MATCHES "memfit probe: no usable CUDA device: ..........")
    message(FATAL_ERROR "without a GPU, 'memfit probe' should say why on stderr, got:\n${err}")
  endif()
  # --json and --max-batch take the same path
  execute_process(COMMAND ${MEMFIT} probe question_cnn --json --max-batch RESULT_VARIABLE rc2
                  OUTPUT_QUIET ERROR_QUIET)
  if(NOT rc2 EQUAL 3)
    message(FATAL_ERROR "without a GPU, 'memfit probe --json --max-batch' should exit 3, got ${rc2}")
  endif()
endif()

# 2. Bad input is exit 2 whether or not there is a GPU, found before the device is opened.
execute_process(COMMAND ${MEMFIT} probe no_such_model_file.memfit RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "a missing model should exit 2, got ${rc}")
endif()
execute_process(COMMAND ${MEMFIT} probe question_cnn --time-limit 0 RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "--time-limit 0 should exit 2, got ${rc}")
endif()
message(STATUS "memfit probe: exit codes as expected (GPU present: ${have_gpu})")
