"""Input the command line must refuse with exit 2 and one line naming the flag or file and the
value, before any work: nothing runs on an empty list, a seed torch cannot take, a count that
is not a count, or a number that is not finite."""

from pathlib import Path

import pytest

from bench.cli import main

RUN = ["run", "--methods", "frozen", "--tasks", "ave", "--preset", "smoke", "--set", "measure.enabled=false"]
SWEEP = ["sweep", "--method", "frozen", "--task", "ave", "--preset", "smoke", "--grid", "train.lr=1e-3,1e-2"]


def refused(args: list[str], folder: Path, capsys) -> str:
    """`args` must exit 2 leaving `folder` (their --out, if any) empty; their stderr, on one line."""
    folder.mkdir(exist_ok=True)
    assert main(args) == 2
    assert not list(folder.iterdir())
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--methods", ""], "argument --methods: expected a comma-separated list, got ''"),
        (["--tasks", " , "], "argument --tasks: expected a comma-separated list, got ' , '"),
        (["--seeds", ""], "argument --seeds: --seeds expects comma-separated integers, got ''"),
        (
            ["--seeds", "99999999999999999999"],
            "argument --seeds: seeds are integers in [0, 2**32), got 99999999999999999999",
        ),
        (["--seeds", "0,-1"], "argument --seeds: seeds are integers in [0, 2**32), got -1"),
        (["--preset", "huge"], "argument --preset: unknown preset 'huge'"),
        (["--set", "train.lr=nan"], "train.lr='nan' is not a finite number"),
        (["--set", "train.weight_decay=inf"], "train.weight_decay='inf' is not a finite number"),
        (["--set", "ave.noise=-inf"], "ave.noise='-inf' is not a finite number"),
    ],
)
def test_run_refuses(flags: list[str], expected: str, tmp_path: Path, capsys) -> None:
    assert expected in refused([*RUN, *flags, "--out", str(tmp_path / "out")], tmp_path, capsys)


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["sweep", "--method", "frozen", "--task", "ave", "--grid", "train.lr=1e-3", "--preset", "huge"], "--preset"),
        (["profile", "--preset", "huge"], "--preset"),
        (["pretrain", "--preset", "huge"], "--preset"),
        (["check-budgets", "--presets", "smoke,huge"], "--presets"),
    ],
)
def test_every_preset_flag_checks_the_name_while_parsing(command: list[str], flag: str, tmp_path: Path, capsys):
    err = refused(
        [*command, *(["--out", str(tmp_path / "out")] if command[0] != "check-budgets" else [])], tmp_path, capsys
    )
    assert f"argument {flag}: unknown preset 'huge' (valid: base, paper, smoke" in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--workers", "0"], "--workers must be > 0, got 0"),
        (["--trials", "-1"], "--trials must be > 0, got -1"),
        (["--trials", "0"], "--trials must be > 0, got 0"),
        (["--max-memory", "-5"], "--max-memory must be > 0, got -5.0"),
        (["--max-memory", "nan"], "--max-memory must be finite, got nan"),
        (["--heartbeat", "0"], "--heartbeat must be > 0, got 0"),
        (["--seeds", "4294967296"], "argument --seeds: seeds are integers in [0, 2**32), got 4294967296"),
    ],
)
def test_sweep_refuses(flags: list[str], expected: str, tmp_path: Path, capsys) -> None:
    assert expected in refused([*SWEEP, *flags, "--out", str(tmp_path / "out")], tmp_path, capsys)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trials = 0\n", "--study-file {path}: trials must be an integer > 0, got 0"),
        ("trials = 'all'\n", "--study-file {path}: trials must be an integer > 0, got 'all'"),
        ("seeds = [0, 4294967296]\n", "--study-file {path}: seeds are integers in [0, 2**32), got 4294967296"),
    ],
)
def test_a_study_files_trials_and_seeds_are_checked_as_the_flags_are(text, expected, tmp_path, capsys) -> None:
    path = tmp_path / "study.toml"
    path.write_text('method = "frozen"\ntask = "ave"\npreset = "smoke"\n' + text + "[grid]\n'train.lr' = [1e-3]\n")
    err = refused(["sweep", "--study-file", str(path), "--out", str(tmp_path / "out")], tmp_path / "out", capsys)
    assert expected.format(path=path) in err


def test_a_plan_files_seeds_are_checked_as_the_flag_is(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('preset = "smoke"\ntasks = ["ave"]\nseeds = [4294967296]\n[candidates]\nfrozen = [[]]\n')
    err = refused(["run", "--plan", str(plan), "--out", str(tmp_path / "out")], tmp_path / "out", capsys)
    assert f"--plan {plan}: seeds are integers in [0, 2**32), got 4294967296" in err


def test_an_error_keeps_a_path_wider_than_the_console_on_one_line(tmp_path: Path, capsys) -> None:
    """Messages are soft-wrapped: a path in an error is left whole for the terminal to wrap, so
    that a copy of it names the file (rich would otherwise break it at 80 columns)."""
    deep = tmp_path / ("a_folder_with_a_long_name_" * 4)
    deep.mkdir()
    plan = deep / "plan.toml"
    plan.write_text('preset = "smoke"\ntasks = ["ave"]\nseeds = [-1]\n[candidates]\nfrozen = [[]]\n')
    assert main(["run", "--plan", str(plan), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(str(plan)) > 100
    assert f"error: --plan {plan}: seeds are integers in [0, 2**32), got -1" in lines


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["profile", "--methods", ","], "argument --methods: expected a comma-separated list, got ','"),
        (["check-budgets", "--presets", ""], "argument --presets: expected a comma-separated list, got ''"),
        (["check-budgets", "--tolerance", "-0.1"], "--tolerance must be a finite number >= 0, got -0.1"),
        (["check-budgets", "--tolerance", "nan"], "--tolerance must be a finite number >= 0, got nan"),
        (
            ["pretrain", "--preset", "smoke", "--seed", "-1"],
            "argument --seed: seeds are integers in [0, 2**32), got -1",
        ),
    ],
)
def test_other_subcommands_refuse(command: list[str], expected: str, tmp_path: Path, capsys) -> None:
    out = [] if command[0] == "check-budgets" else ["--out", str(tmp_path / "out")]
    assert expected in refused([*command, *out], tmp_path, capsys)


def test_argparse_errors_and_help_return_their_exit_code(capsys) -> None:
    assert main(["run", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "check-budgets" in capsys.readouterr().out
