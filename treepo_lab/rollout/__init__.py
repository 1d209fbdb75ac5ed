"""Rollouts: segment-wise tree sampling (TreePO) and the sequential baseline.

config.py      SamplerConfig (every knob) and validate() (values; names are checked in treepo_lab/config.py)
tree.py        Tree / Node / Leaf, JSON
stopping.py    stop rules applied to each new segment (registry STOP_RULES)
divergence.py  budget controls (BUDGETS), initial divergence (INIT_DIVS), allocation (DIV_POLICIES),
               temperature schedule (TEMP_SCHEDULES)
fallback.py    candidate (CANDIDATE_POLICIES) and cut (CUT_POLICIES) policies, node-path truncation
sampler.py     TreeSampler, SequentialSampler (registry SAMPLERS), build_sampler -> RolloutResult(trees, stats)
accounting.py  compute and tree-shape metrics of a rollout
"""
