"""mixexp: Hydra-configured Mixtral MoE experiments on megatron-core.

Importing the package is cheap on purpose: config composition and layout
validation never pull in torch or megatron-core.
"""

__version__ = "0.1.0"
