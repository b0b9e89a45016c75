"""Sweep configs: `python train.py +sweep=NAME` runs the files in sweeps/sweep/.

This file makes the directory importable so conf/train.yaml can put it on
Hydra's search path as `pkg://sweeps`, found from any working directory.
"""
