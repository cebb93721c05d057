# Included by llama.cpp's project() while pip compiles llama-cpp-python for `make test`
# (CMAKE_PROJECT_llama.cpp_INCLUDE in the Makefile). llama-cpp-python forces llama.cpp's
# `common` utilities on (a cache variable set with FORCE) and installs them beside the
# package, but its Python code loads only libllama and ggml. A plain variable in llama.cpp's
# own scope wins over that cache entry (CMake policy CMP0077), so `common` is not compiled:
# 136 of its 246 s of compiling on 2 cores (VNNI EPYC, 2026-12-02).
set(LLAMA_BUILD_COMMON OFF)
