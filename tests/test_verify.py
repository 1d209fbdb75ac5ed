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


# ---- the configurable answer check (task.check): extraction x comparison, each on a small dataset ----

import json  # noqa: E402

from treepo_lab.registry import ConfigError  # noqa: E402
from treepo_lab.tasks.build import build_task  # noqa: E402
from treepo_lab.tasks.check import parse_number  # noqa: E402
from treepo_lab.tasks.config import CheckConfig, TaskConfig  # noqa: E402


def _task(tmp_path, rows, **check):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    held = tmp_path / "held.jsonl"
    held.write_text(path.read_text())
    task = build_task(TaskConfig(name="file", path=str(path), held_out_path=str(held), check=CheckConfig(**check)))
    return task, {p.prompt: p for p in task.held_out()}


STRINGS = [("Reverse cba", "abc"), ("Capital of France?", "Paris"), ("Reverse olleh", "hello")]


def test_math_verify_calls_permuted_strings_equal_which_is_why_string_tasks_need_exact():
    assert is_equivalent("cba", "abc") is True  # a product of three symbols, in any order


def test_string_task_exact_match(tmp_path):
    task, p = _task(tmp_path, STRINGS, compare="exact")
    q = p["Reverse cba"]
    assert not task.score("\\boxed{cba}", q).correct  # 'abc' vs 'cba' is WRONG
    assert task.score("so \\boxed{abc}", q).correct
    assert not task.score("\\boxed{ABC}", q).correct  # case counts unless normalised
    assert task.warnings == []


def test_string_task_under_math_verify_warns(tmp_path):
    task, _ = _task(tmp_path, STRINGS)
    (w,) = task.warnings
    assert "6 of 6 answers are words" in w and "task.check.compare=exact" in w


def test_whole_response_exact_with_normalisation(tmp_path):
    task, p = _task(tmp_path, STRINGS, extract="whole", compare="exact", normalize=["strip", "lower", "punct"])
    assert task.score("  paris. \n", p["Capital of France?"]).correct
    assert not task.score("Paris is the capital", p["Capital of France?"]).correct


def test_gsm8k_hash_numeric(tmp_path):
    rows = [("Natalia sold 48 clips in April and half as many in May. How many in all?",
             "In May: 48/2 = <<48/2=24>>24.\nIn all: 48+24 = <<48+24=72>>72.\n#### 72"),
            ("A shop sells 1000 pens twice.", "#### 2,000")]
    task, p = _task(tmp_path, rows, extract="hash", compare="numeric")
    natalia, pens = task.held_out()
    assert task.score("48/2=24, 48+24=72\n#### 72", natalia).correct  # the reference's own #### is read
    assert task.score("#### 72.", natalia).correct
    assert not task.score("#### 71", natalia).correct
    assert not task.score("The answer is 72", natalia).correct  # no #### line: no answer
    assert task.score("#### 2000", pens).correct and task.score("#### $2,000", pens).correct
    assert task.warnings == []


def test_gsm8k_reference_without_hash_extract_warns(tmp_path):
    task, _ = _task(tmp_path, [("q1", "so 5\n#### 5"), ("q2", "#### 6")])
    assert any("task.check.reference=hash" in w for w in task.warnings)


def test_numeric_tolerance(tmp_path):
    task, p = _task(tmp_path, [("pi?", "3.14159"), ("half?", "\\frac{1}{2}")], compare="numeric", rel_tol=1e-3)
    assert task.score("\\boxed{3.1416}", p["pi?"]).correct
    assert not task.score("\\boxed{3.15}", p["pi?"]).correct
    assert task.score("\\boxed{0.5}", p["half?"]).correct and task.score("\\boxed{1/2}", p["half?"]).correct
    assert not task.score("\\boxed{x}", p["half?"]).correct
    exact, p = _task(tmp_path, [("pi?", "3.14159")], compare="numeric", rel_tol=0)
    assert not exact.score("\\boxed{3.1416}", p["pi?"]).correct


@pytest.mark.parametrize("text, value", [("1,000", 1000.0), ("$5", 5.0), ("50%", 50.0), ("-3/4", -0.75),
                                         ("\\frac{3}{4}", 0.75), ("1e3", 1000.0), ("abc", None), ("1/0", None)])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_regex_extraction(tmp_path):
    task, p = _task(tmp_path, STRINGS, extract="regex", pattern=r"Answer:\s*(\w+)", compare="exact")
    q = p["Reverse olleh"]
    assert task.score("Answer: abc ... no wait. Answer: hello", q).correct  # the last match counts
    assert not task.score("hello", q).correct  # no match: no answer


def test_user_function_from_a_file(tmp_path):
    fn = tmp_path / "my_check.py"
    fn.write_text("def same_letters(answer, reference):\n    return sorted(answer) == sorted(reference)\n"
                  "def broken(answer, reference):\n    raise RuntimeError('bug in my check')\n")
    task, p = _task(tmp_path, STRINGS, compare="python", function=f"{fn}:same_letters")
    assert task.score("\\boxed{cba}", p["Reverse cba"]).correct  # the user's rule, whatever it is
    assert not task.score("\\boxed{cbd}", p["Reverse cba"]).correct
    broken, p = _task(tmp_path, STRINGS, compare="python", function=f"{fn}:broken")
    with pytest.raises(RuntimeError, match="bug in my check"):  # the trainer counts it in reward/errors
        broken.score("\\boxed{abc}", p["Reverse cba"])


def test_user_function_by_module_name(tmp_path, monkeypatch):
    (tmp_path / "userchecks_mod.py").write_text("def rev(a, r):\n    return a[::-1] == r\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task, p = _task(tmp_path, STRINGS, compare="python", function="userchecks_mod:rev")
    assert task.score("\\boxed{cba}", p["Reverse cba"]).correct


@pytest.mark.parametrize("check, key", [
    ({"compare": "python", "function": "no_such_module_xyz:f"}, "task.check.function"),
    ({"compare": "python", "function": "json:no_such_function"}, "task.check.function"),
    ({"compare": "python"}, "task.check.function"),
    ({"compare": "python", "function": "missing_file.py:f"}, "task.check.function"),
    ({"extract": "regex"}, "task.check.pattern"),
    ({"extract": "regex", "pattern": "(unclosed"}, "task.check.pattern"),
    ({"compare": "numeric", "rel_tol": -1}, "task.check.rel_tol"),
    ({"compare": "fuzzy"}, "task.check.compare"),
    ({"extract": "last_line"}, "task.check.extract"),
    ({"compare": "exact", "normalize": ["strip", "casefold"]}, "task.check.normalize"),
])
def test_bad_check_configs_name_the_key(tmp_path, check, key):
    with pytest.raises(ConfigError) as e:
        _task(tmp_path, STRINGS, **check)
    assert e.value.key == key


def test_gsm8k_reference_with_boxed_responses(tmp_path):
    task, _ = _task(tmp_path, [("q", "24+48 = <<24+48=72>>72\n#### 72"), ("r", "#### 1,000")],
                    reference="hash", compare="numeric")
    q, r = task.held_out()
    assert task.score("so \\boxed{72}", q).correct and not task.score("#### 72", q).correct
    assert task.score("\\boxed{1000}", r).correct
    assert task.warnings == []


def test_a_hanging_user_check_is_cut_by_the_reward_time_limit(tmp_path):
    from treepo_lab.algo.scoring import Scorer

    fn = tmp_path / "slow_check.py"
    fn.write_text("import time\ndef slow(answer, reference):\n    time.sleep(5)\n    return True\n"
                  "def boom(answer, reference):\n    raise ValueError('x')\n")
    task, p = _task(tmp_path, STRINGS, compare="python", function=f"{fn}:slow")
    with Scorer(task, str, timeout_s=0.2) as scorer:
        assert scorer.correct("\\boxed{abc}", p["Reverse cba"]) is False and scorer.timeouts == 1
    task, p = _task(tmp_path, STRINGS, compare="python", function=f"{fn}:boom")
    with Scorer(task, str, timeout_s=2) as scorer:
        assert scorer.correct("\\boxed{abc}", p["Reverse cba"]) is False and scorer.errors == 1
