"""How a `grader.check("q")` result reads in a lesson: one clear message per failed check.

otter shows a failed test case as "Error at line N in test ...", the source lines around the failing
`assert` (whose f-string message then reads twice, once as code and once as text), and the message;
two test cases that fail for the same reason (say, an answer still `...`) show it twice; and a check
that only looked at the form of an answer says "passed!". In an IPython kernel `import ftlab` registers
this module's views for otter's results (`install`), so a lesson shows instead:

    best_epoch: not yet.
      best_epoch is 'three'; it should be a whole number of epochs between 0 and 12. Hint: ...

    best_epoch: the form is right; the values are checked when graded.

A test case's `success_message` (its TEST CONFIG) replaces "passed" when it passes: lessons give one
to the public tests that check only the form. Grading is unchanged: scores come from otter itself.
"""
from __future__ import annotations

import html
import re

__all__ = ["failure_reasons", "summary", "summary_html", "install"]

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Warning|Interrupt)|AssertionError): ?", re.M)


def _reason(message: str) -> str:
    """The exception text of one failed test case, without otter's header and source excerpt."""
    found = list(_EXCEPTION_LINE.finditer(message or ""))
    if not found:
        return (message or "").replace("❌ Test case failed", "").strip()
    start = found[0]
    kind, text = start.group(1), message[start.end():].strip().strip("'")
    if kind == "AssertionError":
        return text or "a check failed (it gave no reason)."
    if kind == "NameError":
        return f"{text}. Did the cell that defines it run? Run the notebook from the top (Kernel > Restart and run all)."
    return f"{kind}: {text}"


def failure_reasons(result) -> list[str]:
    """Each distinct reason a check failed, in the order the test cases ran (duplicates once)."""
    reasons: list[str] = []
    for case in result.test_case_results:
        if case.passed:
            continue
        for text in (case.test_case.failure_message, _reason(case.message)):
            if text and text not in reasons:
                reasons.append(text)
    return reasons


def _passed_messages(result) -> list[str]:
    return [case.test_case.success_message for case in result.test_case_results
            if case.passed and case.test_case.success_message]


def summary(result) -> str:
    """Plain text of a check's result (what `print` and a terminal show)."""
    if not result.test_case_results:
        return f"{result.name}: no checks ran."
    if result.passed_all:
        messages = list(dict.fromkeys(_passed_messages(result)))
        return f"{result.name}: " + (" ".join(messages) if messages else "passed!")
    lines = [f"{result.name}: not yet."]
    lines += ["  " + reason.replace("\n", "\n  ") for reason in failure_reasons(result)]
    return "\n".join(lines)


def summary_html(result) -> str:
    """The same as `summary`, for the notebook (what JupyterLab and Colab show)."""
    name = f"<code>{html.escape(result.name)}</code>"
    if not result.test_case_results:
        return f"<p>{name}: no checks ran.</p>"
    if result.passed_all:
        messages = list(dict.fromkeys(_passed_messages(result)))
        text = html.escape(" ".join(messages)) if messages else "passed! ✅"
        return f"<p>{name}: {text}</p>"
    items = "".join(f"<li style='white-space: pre-wrap'>{html.escape(reason)}</li>"
                    for reason in failure_reasons(result))
    return f"<p><strong style='color: #b00020'>{name}: not yet.</strong></p><ul>{items}</ul>"


def install(ipython=None) -> bool:
    """Show otter's check results with `summary_html` and `summary` in this IPython session.

    Registered by class name, so otter is not imported until a lesson imports it; returns False
    outside IPython. Harmless to call twice."""
    if ipython is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        ipython = get_ipython()
    if ipython is None:
        return False
    formatters = ipython.display_formatter.formatters
    where = ("otter.test_files.abstract_test", "TestFile")
    formatters["text/html"].for_type_by_name(*where, summary_html)
    formatters["text/plain"].for_type_by_name(*where, lambda result, printer, cycle: printer.text(summary(result)))
    return True
