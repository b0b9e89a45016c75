"""Data stage: tokenizers, preprocessing to Megatron indexed datasets, readers.

Kept empty on purpose: importing ``mixexp.data`` must stay cheap (no torch,
no megatron-core, no sentencepiece). Import the submodules you need.
"""
