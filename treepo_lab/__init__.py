"""treepo_lab: an experiment and ablation platform for TreePO (arXiv 2508.17445)."""

__version__ = "0.1.0"
