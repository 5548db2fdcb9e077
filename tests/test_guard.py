"""The guard for the whole class of issue 12: every `tnbc` command on hypothesis-generated argument lists
over a small hostile tree ends with exit 0 or one `Error:` line -- never a traceback or a hang -- and
changes no file that existed before. `TNBC_GUARD_EXAMPLES=300 pytest tests/test_guard.py` runs it longer."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import one_error, user_folder, within
from tnbc_pipeline.cli import main
from tnbc_pipeline.data.synth import write_release


# --- The guard: every command, hypothesis-generated arguments, a small hostile tree ----------------------

def _hostile_tree(root: Path) -> dict[str, Path]:
    """Paths a careless user might pass: missing, empty, the user's folder, a file, a FIFO, a symlink,
    odd config files, a release that is the user's data (no synth marker), junk JSON run/records folders."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {"missing": root / "missing", "empty": root / "empty", "user": user_folder(root / "user"),
             "file": root / "file.txt", "fifo": root / "fifo", "link": root / "link",
             "bad_toml": root / "bad.toml", "latin1": root / "latin1.toml", "release": root / "rel",
             "junk_run": root / "junkrun", "junk_records": root / "junkrec"}
    paths["empty"].mkdir()
    paths["file"].write_text("text")
    os.mkfifo(paths["fifo"])
    paths["link"].symlink_to(paths["user"], target_is_directory=True)
    paths["bad_toml"].write_text("epochs = [1,\n")
    paths["latin1"].write_bytes(b"epochs = 1 # \xe9\n")
    release = write_release(paths["release"], size=32)
    (release / "identity.json").unlink()  # the user's data now, not a folder synth made
    paths["junk_run"].mkdir()
    (paths["junk_run"] / "model.keras").write_bytes(b"PK not a model")
    (paths["junk_run"] / "config.json").write_text('{"config": {"patch": -1}}')
    paths["junk_records"].mkdir()
    (paths["junk_records"] / "index.json").write_text('{"shards": [{"file": "/etc/passwd"}]}')
    return paths


OPTIONS = {
    "synth": ["--out", "--seed", "--size"],
    "dataset": ["--raw", "--out", "--config", "--alpha", "--sigma", "--seed", "--split-seed", "--folds", "--fold",
                "--mask-threshold", "--force"],
    "records": ["--dataset", "--out", "--config", "--shard-mb", "--compression", "--verify", "--force"],
    "train": ["--config", "--records", "--run-dir", "--epochs", "--lr", "--loss", "--patch", "--seed", "--strategy",
              "--force"],
    "eval": ["--run-dir", "--records", "--split", "--threshold", "--min-area", "--instances", "--out", "--tta",
             "--no-tta", "--tune-by", "--tune-on"],
    "infer": ["--run-dir", "--images", "--out", "--masks", "--threshold", "--min-area", "--instances"],
    "cv": ["--raw", "--out", "--folds", "--fold", "--epochs", "--seed", "--train-config", "--dataset-config",
           "--min-area"],
    "study": ["--raw", "--out", "--folds", "--fold", "--elastic", "--train-config", "--epochs", "--seed"],
}
FLAGS = {"--force", "--verify", "--tta", "--no-tta"}
OUTPUTS = {"--out", "--run-dir", "--dataset"}  # where a command may write (records: DATASET/tfrecords)
VALUES = ["nan", "inf", "-1", "0", "1", "3", "1e309", str(2**70), "x" * 3000, "", "auto", "watershed", "bce",
          "110:8", "valid", "gzip", "0.5", "aji"]
PATHS = ["missing", "empty", "user", "file", "fifo", "link", "bad_toml", "latin1", "release", "junk_run",
         "junk_records"]


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(OPTIONS)))
    args = [command]
    for option in draw(st.lists(st.sampled_from(OPTIONS[command]), max_size=5, unique=True)):
        args.append(option)
        if option not in FLAGS:
            args.append(draw(st.one_of(st.sampled_from(VALUES), st.sampled_from(PATHS).map(lambda p: f"@{p}"))))
    return args


def _snapshot(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        kind = "link" if path.is_symlink() else "fifo" if path.is_fifo() else "dir" if path.is_dir() else "file"
        content = os.readlink(path) if kind == "link" else path.read_bytes().hex()[:64] + str(path.stat().st_size) \
            if kind == "file" else ""
        out[path.relative_to(root).as_posix()] = (kind, content)
    return out


@settings(max_examples=int(os.environ.get("TNBC_GUARD_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(command_lines())
def test_any_command_line_ends_cleanly_and_touches_only_its_output(tmp_path_factory, args: list[str]) -> None:
    root = tmp_path_factory.mktemp("hostile")
    paths = _hostile_tree(root)
    resolved = [str(paths[a[1:]]) if a.startswith("@") else a for a in args]
    if args[0] in ("cv", "study") and "@release" in args:
        return  # a valid release would start a real training run; the unit tests above cover cv/study
    outputs = [root / Path(resolved[i + 1]) for i, a in enumerate(resolved[:-1]) if a in OUTPUTS]
    outputs += [root / "dataset", root / "runs", root / "cv", root / "study"]  # the default output folders
    before = _snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)  # relative defaults (dataset/TNBC, runs/...) resolve inside the tree
    try:
        with within(90):
            result = CliRunner().invoke(main, ["-q", *resolved])
    finally:
        os.chdir(cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: traceback") from result.exception
    assert result.exit_code in (0, 1), (args, result.output[-500:])
    if result.exit_code == 1:
        one_error(result)
    after = _snapshot(root)
    for name, state in before.items():  # nothing that was there before changed or went away
        assert after.get(name) == state, (args, name)
    allowed = [Path(f(o)) for o in outputs for f in (os.path.abspath, os.path.realpath)]  # a link: where it leads
    for name in set(after) - set(before):  # new files only inside an output folder or beside it (lock, staging)
        path = (root / name).absolute()
        inside = any(path == o or o in path.parents for o in allowed)
        beside = any(path.parent == o.parent and path.name.startswith(f".{o.name}.") for o in allowed)
        assert inside or beside, (args, name)
