# CUDA library rules: filled in with the CUDA sources
