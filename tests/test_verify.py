import threading

import pytest

from treepo_lab.tasks.verify import check_response, is_equivalent, last_boxed


@pytest.mark.parametrize("text, expected", [
    ("The answer is \\boxed{13}", "13"),
    ("\\boxed{1} then \\boxed{2}", "2"),  # the last box counts
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{{a}{b{c}}}.", "{a}{b{c}}"),
    ("no box here", None),
    ("\\boxed{13", None),  # unclosed
    ("\\boxed{1} and \\boxed{2", None),  # the last box is unclosed: no answer
    ("\\boxed{}", ""),
    ("", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("response, reference, ok", [
    ("Step 1: 17+5=22.\nThe answer is \\boxed{22}", "22", True),
    ("The answer is \\boxed{21}", "22", False),
    ("The answer is 22", "22", False),  # no box: wrong
    ("\\boxed{22", "22", False),  # unclosed: wrong
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", False),
    ("\\boxed{007}", "7", True),  # integer fast path compares values
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{ 13 }", "13", True),
    ("\\boxed{}", "13", False),
    ("\\boxed{\\frac{1}{}}", "1", False),  # malformed LaTeX: wrong, not an exception
    ("\\boxed{)(*&^}", "1", False),
])
def test_check_response(response, reference, ok):
    assert check_response(response, reference) is ok


def test_none_answer_is_wrong():
    assert is_equivalent(None, "1") is False


def test_verify_off_the_main_thread():
    # Math-Verify's signal-based timeout fails off the main thread; we must still verify there.
    out = []
    t = threading.Thread(target=lambda: out.append(check_response("\\boxed{\\frac{1}{2}}", "0.5")))
    t.start()
    t.join()
    assert out == [True]
