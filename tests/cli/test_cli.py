"""The front door: `jnet --help`/`--version` and `import jnet` create no files; errors are one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jnet


def _run(args, cwd, home):
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home / "mpl")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _files(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots for p in root.rglob("*"))


def test_help_version_and_import_create_no_files(tmp_path):
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    help_ = _run(["-m", "jnet", "--help"], cwd, home)
    assert help_.returncode == 0 and "demo" in help_.stdout and "train" in help_.stdout
    version = _run(["-m", "jnet", "--version"], cwd, home)
    assert version.returncode == 0 and version.stdout.strip() == f"jnet {jnet.__version__}"
    imported = _run(["-c", "import jnet, jnet.models, jnet.sources.registry; jnet.build_model()"], cwd, home)
    assert imported.returncode == 0, imported.stderr
    assert _files(cwd, home) == []


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    from jnet.cli import main

    missing = tmp_path / "nowhere"
    assert main(["data", "check", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "Traceback" not in err[0]


def test_bad_data_path_names_the_field(tmp_path, capsys):
    from jnet.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {in_size: 16}\ndata: {path: /nowhere}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "data.path" in err and "/nowhere" in err
    assert not (tmp_path / "run").exists()
