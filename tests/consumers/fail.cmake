# cmake -D MESSAGE=... -P fail.cmake: a ctest test that fails with a clear message.
message(FATAL_ERROR "${MESSAGE}")
