"""ftlab.feedback: what a learner reads under a `grader.check(...)` cell."""
from __future__ import annotations

import textwrap

import pytest

otter_tests = pytest.importorskip("otter.test_files")
from ftlab import feedback  # noqa: E402

FORM = "the form is right; the values are checked when graded"
TEST_FILE = textwrap.dedent(f'''
    from otter.test_files import test_case

    OK_FORMAT = False
    name = "best_epoch"
    points = 3

    @test_case(points=0, hidden=False, success_message="{FORM}")
    def test_form(best_epoch):
        from ftlab import grading
        grading.assert_answered(best_epoch, "best_epoch")
        assert isinstance(best_epoch, int), (
            f"best_epoch is {{best_epoch!r}}; it should be a whole number of epochs. Hint: history.best_epoch")

    @test_case(points=3, hidden=False)
    def test_value(best_epoch):
        from ftlab import grading
        grading.assert_answered(best_epoch, "best_epoch")
        assert best_epoch == 4, f"best_epoch is {{best_epoch}}, but the validation loss is lowest at epoch 4."

    @test_case(points=0, hidden=False)
    def test_uses_a_name(best_epoch, history):
        assert history is not None
''')


@pytest.fixture
def check(tmp_path):
    path = tmp_path / "best_epoch.py"
    path.write_text(TEST_FILE)

    def run(**env):
        result = otter_tests.ExceptionTestFile.from_file(str(path))
        result.run({"history": object(), **env})
        return result
    return run


def test_a_form_only_pass_says_what_was_checked_not_passed(check):
    result = check(best_epoch=4)
    assert feedback.summary(result) == f"best_epoch: {FORM}"
    assert "passed" not in feedback.summary_html(result) and FORM in feedback.summary_html(result)


def test_a_plain_pass_says_passed(tmp_path):
    path = tmp_path / "q.py"
    path.write_text("from otter.test_files import test_case\nOK_FORMAT = False\nname = 'q'\npoints = 1\n"
                    "@test_case(points=1, hidden=False)\ndef test_q(x):\n    assert x == 1\n")
    result = otter_tests.ExceptionTestFile.from_file(str(path))
    result.run({"x": 1})
    assert feedback.summary(result) == "q: passed!"


def test_a_failure_shows_its_message_once_without_the_source_line(check):
    text = feedback.summary(check(best_epoch=7))
    assert text.splitlines()[0] == "best_epoch: not yet."
    assert "but the validation loss is lowest at epoch 4" in text
    assert "assert best_epoch" not in text and "Error at line" not in text and 'f"' not in text
    assert text.count("lowest at epoch 4") == 1


def test_the_same_reason_from_two_cases_is_shown_once(check):
    text = feedback.summary(check(best_epoch=...))
    assert text.count("best_epoch is still `...`") == 1, text
    assert "Ellipsis" not in text


def test_an_error_in_the_learners_code_is_named_with_a_hint(check):
    result = check(best_epoch=4, history=None)
    text = feedback.summary(result)
    assert "a check failed (it gave no reason)" in text  # a bare assert: lessons always give one
    assert feedback._reason("Error at line 2 in test t:\n  x\nNameError: name 'x' is not defined") == (
        "name 'x' is not defined. Did the cell that defines it run? Run the notebook from the top "
        "(Kernel > Restart and run all).")
    assert feedback._reason("Error at line 2 in test t:\n  f()\nValueError: bad shape") == "ValueError: bad shape"


def test_html_escapes_the_learners_text(check):
    page = feedback.summary_html(check(best_epoch="<script>"))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_install_registers_both_views_in_ipython(check):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        assert feedback.install(shell)
        shown, _ = shell.display_formatter.format(check(best_epoch=7))
        assert shown["text/plain"].startswith("best_epoch: not yet.")
        assert "not yet" in shown["text/html"] and "Error at line" not in shown["text/html"]
    finally:
        InteractiveShell.clear_instance()


def test_install_outside_ipython_does_nothing():
    assert feedback.install() is False
