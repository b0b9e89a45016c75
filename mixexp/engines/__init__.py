"""Training engines other than mixexp's own loop (`engine=native`, mixexp.worker).

`megatron_lm`: a team's Megatron-LM or MindSpeed-LLM checkout runs `pretrain_gpt.py` with
the rendered arguments; mixexp launches it, parses its log and writes the same outputs.
"""
