"""From what a sandbox reported to a learner's grade: scores, status, reason, otter's results dict.

    result, otter = interpret(outcome, submission, autograder, limits)
    otter_results(tests, not_graded, autograder)   # otter's dict, as `otter run` writes it

Points and test visibility come from the autograder; from the sandbox only which test cases passed
and their messages, so a run cannot award itself points.
"""
from __future__ import annotations

from .autograder import Autograder
from .reports import SubmissionResult
from .sandbox import Limits, Outcome
from .submissions import Submission

__all__ = ["interpret", "otter_results", "zero_result"]


def zero_result(sub: Submission, ag: Autograder, status: str, reason: str, seconds: float = 0.0) -> SubmissionResult:
    return SubmissionResult(sub.learner, {q: 0.0 for q in ag.questions}, dict(ag.questions), status, reason,
                            sub.sha256, sub.origin, seconds)


def otter_results(tests: dict[str, dict], not_graded: dict[str, str], ag: Autograder) -> dict:
    """otter's results dict (what `otter run` writes) from each question's test case results, as the
    sandbox reported them ([{"case", "passed", "message"}]); a question not graded fails every case,
    saying why."""
    from otter.run.run_autograder.autograder_config import AutograderConfig
    from otter.test_files import GradingResults
    from otter.test_files.abstract_test import TestCaseResult
    from otter.test_files.ok_test import OKTestFile

    files = []
    for question, (cases, all_or_nothing) in ag.cases.items():
        test = OKTestFile(question, f"tests/{question}.py", list(cases), all_or_nothing)
        record = tests.get(question)
        try:  # points and visibility come from the autograder, only pass/fail and messages from the run
            if len(record) != len(cases) or any(r["case"] != c.name for r, c in zip(record, cases)):
                raise ValueError("not one result per test case")
            test.test_case_results = [TestCaseResult(case, str(r["message"]), r["passed"] is True)
                                      for case, r in zip(cases, record)]
        except (TypeError, KeyError, ValueError):
            why = not_graded.get(question, "no result came back for this question")
            test.test_case_results = [TestCaseResult(case, f"❌ not graded: {why}", False) for case in cases]
        files.append(test)
    return GradingResults(files).to_gradescope_dict(AutograderConfig(ag.config))


def _reasons(run: dict, limits: Limits, ag: Autograder) -> tuple[list[str], dict[str, str]]:
    """What to say about a run, and why each question without a result has none."""
    parts, not_graded = [], dict(run.get("missing", {}))
    if run.get("stopped_at"):
        parts.append(f"stopped at the time limit in cell {run['stopped_at']}; later cells were skipped")
    left = [q for q in ag.questions if q not in run.get("tests", {}) and q not in not_graded]
    if left:
        if run.get("kernel_died_in"):
            why = f"the kernel died in {run['kernel_died_in']} (os._exit, a crash, or out of memory)"
        elif run.get("grading_timed_out"):
            why = "the notebook did not stop when interrupted at the time limit"
        else:
            why = "the grading step gave no result"
        parts.append(f"{why}: {', '.join(left)} could not be graded")
        not_graded.update({q: why for q in left})
    parts += [not_graded[q] for q in run.get("missing", {})]
    errors = run.get("errors", [])
    if errors:
        parts.append(errors[0] + (f" (and {len(errors) - 1} more cells raised errors)" if len(errors) > 1 else ""))
    if run.get("output_dropped_bytes"):
        parts.append(f"printed {run['output_dropped_bytes'] / 2**20:.1f} MB more output than the "
                     f"{limits.output_mb:g} MB kept")
    parts += run.get("notes", [])
    return parts, not_graded


def interpret(outcome: Outcome, sub: Submission, ag: Autograder, limits: Limits) -> tuple[SubmissionResult, dict | None]:
    """A sandbox's outcome as a SubmissionResult (and otter's results dict when there is one)."""
    seconds = outcome.seconds
    if outcome.timed_out:
        return zero_result(sub, ag, "timed-out", f"did not finish within {limits.timeout_s:g} s and was killed", seconds), None
    run = outcome.result
    if run is None:
        code = outcome.returncode
        if code is not None and (code < 0 or code >= 128):
            sig = -code if code < 0 else code - 128
            return zero_result(sub, ag, "crashed", f"the sandbox was killed by signal {sig} (out of memory, or the "
                                             "notebook killed it); nothing could be graded", seconds), None
        last = (outcome.log_tail.strip().splitlines() or ["no output"])[-1]
        return zero_result(sub, ag, "grader-error", f"the grader's runner stopped without a result: {last[:300]}",
                     seconds), None
    if run.get("status") != "ok":
        return zero_result(sub, ag, "grader-error", f"the grader failed: {run.get('error', 'unknown error')}", seconds), None
    parts, not_graded = _reasons(run, limits, ag)
    if not run.get("tests"):  # nothing at all was graded
        status = "timed-out" if run.get("grading_timed_out") or run.get("stopped_at") else "crashed"
        return zero_result(sub, ag, status, "; ".join(parts) or "nothing could be graded", seconds), None
    otter = otter_results(run["tests"], not_graded, ag)
    changed = [q for q in run.get("tests_changed", []) if q in ag.questions]
    if changed:
        parts.append("tampering: test files changed while grading; scored 0 for " + ", ".join(changed))
        for test in otter["tests"]:
            if test.get("name") in changed:
                test["score"] = 0.0
    scores, outputs = {q: 0.0 for q in ag.questions}, {}
    for test in otter["tests"]:
        if test.get("name") in scores and "score" in test:
            scores[test["name"]] = float(test["score"])
            outputs[test["name"]] = test.get("output", "")
    result = SubmissionResult(sub.learner, scores, dict(ag.questions), "graded", "; ".join(parts), sub.sha256,
                              sub.origin, seconds, outputs)
    return result, otter
