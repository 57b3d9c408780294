"""A class graded on several machines: which learners each one grades, and joining what they wrote.

    shard = Shard.parse("2/3")                  # `ftlab grade ... --shard 2/3`
    shard.holds("alice")                        -> True or False, the same on every machine
    report = merge_shards(["out-1", "out-2", "out-3"], out="merged")   # `ftlab grade merge`

A learner's share is sha256 of the learner's key (the name the CSV shows, without the " (2)" that
tells two files of one name apart) modulo N: it depends on that name alone, so adding, removing or
renaming other learners never moves anyone, and every runner computes it alike (no Python `hash()`,
which PYTHONHASHSEED changes; no position in a sorted list, which shifts when a name is inserted).
Each shard's OUT gets `shard.json` beside its results: the autograder, the whole class it saw and
its own learners. `merge_shards` checks those agree, then writes the results folder, grades.csv
and junit.xml that one batch over the whole class writes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import paths
from .reports import SubmissionResult, read_result, summary_table, write_atomic, write_csv, write_junit
from .submissions import Submission, slug

__all__ = ["Shard", "shard_of", "learner_key", "class_digest", "write_manifest", "merge_shards", "MergeReport",
           "MergeRefused", "format_merge_report", "MANIFEST"]

MANIFEST = "shard.json"
_DUPLICATE = re.compile(r" \(\d+\)$")  # find_submissions' "alice (2)": a second file named alice
_SAY = 5  # names listed in a message before "and N more"


class MergeRefused(ValueError):
    """The folders given to `ftlab grade merge` are not the shards of one batch."""


def learner_key(learner: str) -> str:
    """What a learner's shard depends on: "late/alice" stays itself, "alice (2)" becomes "alice"."""
    return _DUPLICATE.sub("", learner)


def shard_of(learner: str, count: int) -> int:
    """The shard (1..count) that grades `learner`: the first 8 bytes of sha256(key), big-endian, mod count."""
    digest = hashlib.sha256(learner_key(learner).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass(frozen=True)
class Shard:
    index: int  # 1..count
    count: int  # how many machines share the class

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"shard {self.index}/{self.count} does not exist: N, the number of machines, "
                             "must be at least 1")
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count} does not exist: K/N needs 1 <= K <= N "
                             f"(shards count from 1: 1/{self.count} ... {self.count}/{self.count})")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """"2/3" -> Shard(2, 3); errors say what was wrong and what is valid."""
        match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
        if not match:
            raise ValueError(f"{text!r} is not a shard: write K/N, e.g. 2/3 (the second of 3 machines)")
        return cls(int(match.group(1)), int(match.group(2)))

    def holds(self, learner: str) -> bool:
        return shard_of(learner, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def class_digest(subs: Sequence[Submission]) -> str:
    """sha256 over every (learner, file hash) of the class: shards of one batch saw the same class."""
    hasher = hashlib.sha256()
    for sub in sorted(subs, key=lambda s: s.learner):
        hasher.update(f"{sub.learner}\0{sub.sha256}\n".encode("utf-8"))
    return hasher.hexdigest()


def write_manifest(out: Path, *, shard: Shard, everyone: Sequence[Submission], results: Sequence[SubmissionResult],
                   autograder_sha256: str, questions: dict[str, float], report_name: str,
                   grader_version: str) -> None:
    """OUT/shard.json: what `merge_shards` needs to check that shards belong together."""
    manifest = {"shard": str(shard), "index": shard.index, "count": shard.count,
                "autograder_sha256": autograder_sha256, "grader_version": grader_version,
                "questions": [[q, p] for q, p in questions.items()], "report_name": report_name,
                "class": {"submissions": len(everyone), "sha256": class_digest(everyone)},
                "learners": [r.learner for r in results],
                "grader_errors": [r.learner for r in results if r.status == "grader-error"]}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))


@dataclass
class MergeReport:
    results: list[SubmissionResult]
    questions: list[str]
    out: Path
    shards: int


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SAY])
    return shown + (f" and {len(names) - _SAY} more" if len(names) > _SAY else "")


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise MergeRefused(f"{folder} has no {MANIFEST}: it is not the output of a finished `ftlab grade "
                           "--shard K/N` run (a run that could not finish writes none; run it again)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        Shard(int(manifest["index"]), int(manifest["count"]))
        for key in ("autograder_sha256", "grader_version", "questions", "report_name", "class", "learners"):
            manifest[key]
    except (ValueError, KeyError, TypeError) as error:
        raise MergeRefused(f"{path} is not a shard manifest ftlab can read ({type(error).__name__}: {error})") from None
    return manifest


# what shards of one batch share, and how to say it when one differs
_SAME = [("count", "is a share of {} machines"),
         ("autograder_sha256", "was graded with another autograder (sha256 {:.12}…)"),
         ("grader_version", "was graded by grader version {}"),
         ("questions", "has other questions ({})"),
         ("class", "saw another class ({0[submissions]} submissions, sha256 {0[sha256]:.12}…)")]


def _check_together(folders: list[Path], manifests: list[dict]) -> None:
    first, first_folder = manifests[0], folders[0]
    for folder, manifest in zip(folders[1:], manifests[1:]):
        for key, says in _SAME:
            if manifest[key] != first[key]:
                raise MergeRefused(f"{folder} (shard {manifest['shard']}) {says.format(manifest[key])}, unlike "
                                   f"{first_folder} (shard {first['shard']}, which {says.format(first[key])}): only "
                                   "shards of one batch (one autograder, one class, one N) can be merged")
    seen: dict[int, Path] = {}
    for folder, manifest in zip(folders, manifests):
        if manifest["index"] in seen:
            raise MergeRefused(f"{seen[manifest['index']]} and {folder} are both shard {manifest['shard']}: "
                               "give each shard once")
        seen[manifest["index"]] = folder
    owner: dict[str, Path] = {}
    overlap = []
    for folder, manifest in zip(folders, manifests):
        for learner in manifest["learners"]:
            if learner in owner:
                overlap.append(f"{learner} ({owner[learner]} and {folder})")
            owner[learner] = folder
    if overlap:
        raise MergeRefused(f"learners graded in more than one shard: {_listed(overlap)}; "
                           "a learner belongs to exactly one shard: were these graded with other shard counts?")
    count = first["count"]
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in seen]
    if missing:
        have = sum(len(m["learners"]) for m in manifests)
        raise MergeRefused(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)}: the given "
                           f"{len(manifests)} hold {have} of the class's {first['class']['submissions']} "
                           f"submissions; grade the missing ones (`ftlab grade ... --shard {missing[0]}`) and "
                           "merge all of them")
    errors = [(folder, m) for folder, m in zip(folders, manifests) if m.get("grader_errors")]
    if errors:
        folder, manifest = errors[0]
        raise MergeRefused(f"shard {manifest['shard']} ({folder}) has submissions the grader failed on "
                           f"({_listed(manifest['grader_errors'])}): run that shard again (it keeps what is "
                           "done) and merge then")
    if len(owner) != first["class"]["submissions"]:
        raise MergeRefused(f"the shards hold {len(owner)} learners but the class has "
                           f"{first['class']['submissions']} submissions")


def _collect(folders: list[Path], manifests: list[dict]) -> dict[str, tuple[SubmissionResult, Path, Path | None]]:
    """learner -> (result, its results file, its saved notebook or None), each checked against its shard."""
    found = {}
    for folder, manifest in zip(folders, manifests):
        for learner in manifest["learners"]:
            path = folder / "results" / f"{slug(learner)}.json"
            read = read_result(path)
            if read is None or read[0].learner != learner:
                raise MergeRefused(f"{folder} (shard {manifest['shard']}) lists {learner} but has no readable "
                                   f"result for them ({path}): run that shard again")
            result, meta = read
            if meta.get("autograder_sha256") != manifest["autograder_sha256"] \
                    or meta.get("grader_version") != manifest["grader_version"]:
                raise MergeRefused(f"{path} was graded by another autograder or grader than its shard says: "
                                   "run that shard again")
            notebook = folder / "notebooks" / f"{slug(learner)}.ipynb"
            found[learner] = (dataclasses.replace(result, reused=False), path,
                              notebook if notebook.is_file() else None)
    return found


def merge_shards(folders: Sequence[str | Path], *, out: str | Path) -> MergeReport:
    """Join the OUT folders of `ftlab grade --shard K/N` (every K of one N) into `out`: the results
    folder (and notebooks/, if saved), grades.csv and junit.xml one batch over the class writes.

    Raises MergeRefused, saying why, for shards of different autograders, grader versions or
    classes, a shard given twice or missing, learners in two shards, or a shard with grader errors."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise MergeRefused("no shard folders given")
    out = Path(out)
    if any(out.resolve() == f.resolve() for f in folders):
        raise MergeRefused(f"{out} is one of the shards: merge into a folder of its own")
    manifests = [_read_manifest(f) for f in folders]
    _check_together(folders, manifests)
    found = _collect(folders, manifests)
    wanted = {f"{slug(learner)}.json" for learner in found}
    stale = sorted(p.name for p in (out / "results").glob("*.json") if p.name not in wanted) \
        if (out / "results").is_dir() else []
    if stale:
        raise MergeRefused(f"{out / 'results'} already holds results of learners not in these shards "
                           f"({_listed(stale)}): merge into an empty folder")
    (out / MANIFEST).unlink(missing_ok=True)  # a merged folder is a batch's, not a shard's
    for learner, (result, path, notebook) in found.items():  # byte for byte, readable by this account only
        paths.write_atomic(out / "results" / path.name, path.read_bytes(), mode=0o600)
        if notebook is not None:
            paths.write_atomic(out / "notebooks" / notebook.name, notebook.read_bytes(), mode=0o600)
    first = manifests[0]
    ordered = [found[learner][0] for learner in sorted(found)]  # a batch's order: find_submissions sorts
    questions = [q for q, _ in first["questions"]]
    write_csv(out / "grades.csv", ordered, questions)
    write_junit(out / "junit.xml", ordered, questions, name=first["report_name"])
    return MergeReport(ordered, questions, out, len(folders))


def format_merge_report(report: MergeReport) -> str:
    """The terminal summary of a merge: the class table, counts, where the files are."""
    counts: dict[str, int] = {}
    for r in report.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    total = sum(r.total for r in report.results)
    possible = sum(r.max_total for r in report.results) or 1
    return "\n".join([summary_table(report.results, report.questions), "",
                      f"merged {report.shards} shards: {len(report.results)} submissions: "
                      + ", ".join(f"{n} {s}" for s, n in counts.items())
                      + f"; mean {100 * total / possible:.0f}% of the points",
                      f"wrote {report.out / 'grades.csv'}, {report.out / 'junit.xml'}, {report.out / 'results'}/"])
