"""Rollouts: segment-wise tree sampling (TreePO) and the sequential baseline.

config.py      SamplerConfig (every knob) and validate()
tree.py        Tree / Node / Leaf, JSON
stopping.py    stopping rules applied to each new segment
divergence.py  budget control, allocation policies, temperature schedule
fallback.py    candidate and cut policies, node-path truncation
sampler.py     TreeSampler, SequentialSampler, build_sampler -> RolloutResult(trees, stats)
accounting.py  compute and tree-shape metrics of a rollout
"""
