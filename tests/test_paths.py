"""ftlab.paths: one place for FTLAB_HOME, a file's sha256 (cached until the file changes) and atomic
writes; and the modules that used to have their own copies of each now follow it."""
from __future__ import annotations

import ast
import builtins
import hashlib
import os
import stat
from pathlib import Path

import pytest

import ftlab
from ftlab import datasets, doctor, paths, pretrain, store
from ftlab.grade import reports

PACKAGE = Path(ftlab.__file__).parent
OLD = 1_000_000_000 * 1_600_000_000  # 2020-09-13 in ns: a file this old is past the racy window


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(saved)


@pytest.fixture
def opens(monkeypatch):
    """How often each file was opened (through the builtin open, which sha256_file uses)."""
    counts: dict[str, int] = {}
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            key = str(Path(file).absolute())
            counts[key] = counts.get(key, 0) + 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return lambda path: counts.get(str(Path(path).absolute()), 0)


def make_old(path: Path) -> None:
    os.utime(path, ns=(OLD, OLD))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- home() ------------------------------------------------------------------------------------------

def test_home_is_ftlab_home_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "elsewhere"))
    assert paths.home() == tmp_path / "elsewhere"


@pytest.mark.parametrize("value", [None, ""])
def test_home_defaults_to_the_user_cache(monkeypatch, tmp_path, value):
    """Unset or empty (an empty value would otherwise make the working folder the cache)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("FTLAB_HOME", raising=False)
    else:
        monkeypatch.setenv("FTLAB_HOME", value)
    assert paths.home() == tmp_path / ".cache" / "ftlab"


def test_every_reader_of_ftlab_home_follows_home(ftlab_home):
    assert pretrain.checkpoint_path("x") == ftlab_home / "models" / "x.safetensors"
    assert store.RunStore().root == ftlab_home / "runs"
    assert ftlab_home / "data" / "fashion-mnist" in datasets._fashion_candidates()
    assert doctor.report()["environment"]["FTLAB_HOME"] == (True, str(ftlab_home))


def _reads_ftlab_home(tree: ast.AST) -> bool:
    """True when the module reads the variable: os.environ.get("FTLAB_HOME"), os.getenv(...),
    os.environ["FTLAB_HOME"]. Mentions in texts and labels (doctor's row) do not count."""
    def is_key(node) -> bool:
        return isinstance(node, ast.Constant) and node.value == "FTLAB_HOME"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("get", "getenv") and node.args and is_key(node.args[0]):
            return True
        if isinstance(node, ast.Subscript) and is_key(node.slice):
            return True
    return False


def test_only_paths_reads_the_ftlab_home_variable():
    """The library's modules (ftlab/*.py) all ask paths.home(); none reads the variable itself.
    (ftlab/grade sets it for the sandboxed kernels it starts: that is a different job.)"""
    readers = [p.name for p in sorted(PACKAGE.glob("*.py")) if _reads_ftlab_home(ast.parse(p.read_text()))]
    assert readers == ["paths.py"]


# --- sha256_file -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) * 2 + 7])
def test_sha256_file_equals_hashlib_on_the_whole_file(tmp_path, size):
    path = tmp_path / "blob"
    data = os.urandom(size)
    path.write_bytes(data)
    assert paths.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert paths.sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def test_an_unchanged_file_is_read_once(tmp_path, opens):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"w" * 5000)
    make_old(path)
    first = paths.sha256_file(path)
    assert paths.sha256_file(path) == paths.sha256_file(str(path)) == first
    assert opens(path) == 1


def test_a_file_modified_in_place_with_the_same_size_is_rehashed(tmp_path, opens):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 5000)
    make_old(path)
    before = paths.sha256_file(path)
    with open(path, "r+b") as f:  # one byte flipped, same size, same inode
        f.seek(2500)
        f.write(b"b")
    after = paths.sha256_file(path)
    assert after != before and after == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_modified_file_with_its_old_mtime_restored_is_still_rehashed(tmp_path):
    """os.utime can put the mtime back; it cannot put the ctime back."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 5000)
    make_old(path)
    before = paths.sha256_file(path)
    with open(path, "r+b") as f:
        f.write(b"b")
    make_old(path)
    assert paths.sha256_file(path) != before


def test_a_replaced_file_is_rehashed(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 5000)
    make_old(path)
    paths.sha256_file(path)
    paths.write_atomic(path, b"c" * 5000)
    make_old(path)
    assert paths.sha256_file(path) == hashlib.sha256(b"c" * 5000).hexdigest()


def test_a_freshly_written_file_is_not_trusted_from_memory(tmp_path, opens):
    """Within the racy window a same-size rewrite may keep every stat field: read it again."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 5000)
    paths.sha256_file(path)
    paths.sha256_file(path)
    assert opens(path) == 2


def test_sha256_file_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        paths.sha256_file(tmp_path / "nothing")


# --- write_atomic ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_write_atomic_follows_the_umask_by_default(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "card.json"
    paths.write_atomic(path, b"{}")
    assert mode_of(path) == 0o666 & ~mask
    assert path.read_bytes() == b"{}"


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_write_atomic_with_a_mode_sets_exactly_that_mode(tmp_path, umask, mask):
    umask(mask)
    private, group = tmp_path / "grades.json", tmp_path / "shared.json"
    paths.write_atomic(private, b"x", mode=0o600)
    paths.write_atomic(group, b"x", mode=0o640)
    assert mode_of(private) == 0o600
    assert mode_of(group) == 0o640  # not narrowed by the umask either


def test_write_atomic_replaces_makes_folders_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a" / "b" / "record.json"
    paths.write_atomic(path, b"first")
    paths.write_atomic(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    paths.write_atomic(path, b"old")

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(paths.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        paths.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


@pytest.mark.parametrize("mode", [0o1777, -1, "600", 0.5])
def test_write_atomic_rejects_a_bad_mode_naming_the_valid_ones(tmp_path, mode):
    with pytest.raises(ValueError, match="0o777"):
        paths.write_atomic(tmp_path / "x", b"", mode=mode)
    assert not (tmp_path / "x").exists()


def test_store_reexports_the_one_write_atomic():
    assert store.write_atomic is paths.write_atomic


def test_grade_reports_write_private_utf8_files(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "results" / "ada.json"
    text = 'grade: "été"\r\nline two\n'
    reports.write_atomic(path, text)
    assert mode_of(path) == 0o600  # learners' grades: this account only
    assert path.read_bytes() == text.encode("utf-8")  # newlines untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["ada.json"]


def test_run_store_writes_follow_the_umask(ftlab_home, umask):
    """Run records live in a cache other accounts may share: not 0600."""
    umask(0o022)
    runs = store.RunStore()
    runs.put("ab" * 32, {"ok": True})
    assert runs.get("ab" * 32) == {"ok": True}
    assert mode_of(runs.root / "ab" / f"{'ab' * 32}.json") == 0o644


# --- the public data functions that `ftlab setup` and `ftlab doctor` use --------------------------------

def _private_uses(path: Path, module: str) -> list[str]:
    """Names starting with _ that the file takes from ftlab.<module> (imported or as an attribute)."""
    tree, found = ast.parse(path.read_text()), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == module:
            found += [a.name for a in node.names if a.name.startswith("_")]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == module \
                and node.attr.startswith("_"):
            found.append(node.attr)
    return found


@pytest.mark.parametrize("name", ["install.py", "doctor.py"])
def test_install_and_doctor_use_only_public_functions(name):
    for module in ("datasets", "models", "pretrain", "weights"):
        assert _private_uses(PACKAGE / name, module) == [], module


def test_verify_counts_examples_after_checking_checksums():
    assert datasets.verify("digits") == 1797
    assert datasets.verify("bbc-news") == 2225
    assert datasets.bbc_news_location().is_dir()


def test_verify_refuses_data_that_differs_from_the_recorded_checksum(monkeypatch):
    monkeypatch.setattr(datasets, "DIGITS_SHA256", "0" * 64)
    with pytest.raises(datasets.DataUnavailable, match="checksum mismatch"):
        datasets.verify("digits")


def test_verify_names_the_datasets_it_knows():
    with pytest.raises(ValueError) as error:
        datasets.verify("mnist")
    assert all(name in str(error.value) for name in datasets.NAMES)


def test_old_private_names_still_work():
    assert datasets._bbc_root is datasets.bbc_news_location
    assert datasets._download_fashion_mnist is datasets.download_fashion_mnist
    assert datasets._ftlab_home() == paths.home()


def test_setup_without_model_builds_reports_every_step(ftlab_home, capsys):
    from ftlab import install

    install.ensure_all(build_models=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ftlab setup: fashion-mnist: ")
    assert lines[1:] == [
        "ftlab setup: digits: 1797 images (scikit-learn)",
        f"ftlab setup: bbc-news: 2225 articles ({datasets.bbc_news_location()})",
        "ftlab setup: bert weights: all-MiniLM-L6-v2 sha256 verified"]
