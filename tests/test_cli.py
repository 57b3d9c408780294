"""ftlab.cli: the `ftlab` command, run in-process (and once as `python -m ftlab`)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def check_doctor_output(out: str) -> None:
    lines = out.splitlines()
    for section in ("environment", "datasets", "weights"):
        assert section in lines  # section headers stand on their own line
    datasets, weights = lines.index("datasets"), lines.index("weights")
    assert datasets < weights
    dataset_rows = lines[datasets + 1:weights]
    for name in ("fashion-mnist", "digits", "bbc-news"):
        assert any(re.match(rf"\s+(ok|--)\s+{re.escape(name)}\s", row) for row in dataset_rows), name
    weight_rows = lines[weights + 1:]
    names = ("resnet18 fashion-mnist (ftlab)", "resnet18 fashion-mnist-6 (ftlab)",
             "bert all-MiniLM-L6-v2", "resnet18 imagenet (torchvision)")
    for name in names:
        assert any(name in row for row in weight_rows), name
    # on this machine the offline data and MiniLM are installed: they must show as working
    assert any(re.match(r"\s+ok\s+digits\s", row) for row in dataset_rows)
    assert any(re.match(r"\s+ok\s+bert all-MiniLM-L6-v2\s.*sha256 verified", row) for row in weight_rows)


def test_doctor_prints_datasets_and_weights(capsys):
    assert main(["doctor"]) == 0
    check_doctor_output(capsys.readouterr().out)


def test_python_m_ftlab_doctor_runs_as_a_console_command():
    result = subprocess.run([sys.executable, "-m", "ftlab", "doctor"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_doctor_output(result.stdout)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, mentions", [
    (["finetune", "--lr", "-1"], "--lr"),
    (["finetune", "--lr", "fast"], "not a number"),
    (["finetune", "--epochs", "0"], "--epochs"),
    (["finetune", "--n-train", "-5"], "--n-train"),
    (["finetune", "--data", "mnist"], "digits"),  # names the valid choices
    (["pretrain", "resnet50"], "resnet18-fashion-mnist"),
    (["train"], "finetune"),
])
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(capsys, argv, mentions):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ftlab: error:") and mentions in err
    assert "Traceback" not in err


def test_frozen_depth_out_of_range_returns_1_naming_the_valid_range(capsys):
    assert main(["finetune", "--data", "digits", "--n-train", "20", "--epochs", "1",
                 "--frozen-depth", "9", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ftlab finetune: error:") and "0..5" in err and "9" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, mentions", [
    (["--model", "bert", "--data", "digits"], "needs text data"),
    (["--model", "resnet18", "--data", "bbc-news"], "needs image data"),
    (["--data", "digits", "--n-train", "5"], "n_train=5"),
])
def test_wrong_combinations_return_1_with_a_message(capsys, argv, mentions):
    assert main(["finetune", *argv, "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ftlab finetune: error:") and mentions in err
    assert "Traceback" not in err


def test_finetune_on_digits_prints_results_and_writes_png(tmp_path, capsys):
    png = tmp_path / "x.png"
    assert main(["finetune", "--data", "digits", "--n-train", "50", "--epochs", "1", "--frozen-depth", "5",
                 "--quiet", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    columns = lines[header].split()
    assert {"train_loss", "val_loss", "val_acc"} <= set(columns)
    rows = [dict(zip(columns, line.split())) for line in lines[header + 1:header + 3]]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(0 <= float(r["val_acc"]) <= 1 for r in rows)
    test_line = next(line for line in lines if "test accuracy" in line)
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", test_line).group(1))
    assert 0 <= accuracy <= 100 and "on 539 examples" in test_line
    assert "frozen depth 5 of 5" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"written to {png}" in out
