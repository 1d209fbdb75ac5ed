"""Evaluation helpers: maj@k votes with the task's own answer check; the bootstrap interval."""
from __future__ import annotations

from treepo_lab.tasks.check import AnswerCheck
from treepo_lab.tasks.config import CheckConfig
from treepo_lab.train.evaluate import bootstrap_ci, majority_correct


def test_majority_votes_with_the_tasks_check():
    hash_exact = AnswerCheck(CheckConfig(extract="hash", compare="exact"))
    responses = ["so #### 5", "#### 7", "I think #### 5", "no answer"]
    assert majority_correct(responses, "5", hash_exact)
    assert not majority_correct(responses, "7", hash_exact)
    assert not majority_correct(responses, "5", AnswerCheck(CheckConfig()))  # boxed: nobody answered
    assert majority_correct(["\\boxed{1/2}", "\\boxed{1/2}", "\\boxed{3}"], "0.5", AnswerCheck(CheckConfig()))
    assert not majority_correct([], "5", hash_exact)


def test_bootstrap_interval_brackets_the_mean():
    lo, hi = bootstrap_ci([0, 1] * 50)
    assert lo < 0.5 < hi and hi - lo < 0.3
