"""The command line as a user meets it (issue 17, item 5): --version, shell completion, --json on every command that
prints data (stdout parses as JSON on its own), `raymlops init`, and Ray's own noise kept out of the output.

In process through the real entry point (`raymlops.cli.main`) and Typer's CliRunner; no Ray (unit tests refuse it).
"""

from __future__ import annotations

import json
import logging
import socket
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import raymlops
from raymlops.cli import app, main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "churn.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json(capsys, argv: list[str], code: int = 0):
    """Run the CLI; stdout must be one JSON document (or JSON lines) and nothing else."""
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == code, out.out + out.err
    return json.loads(out.out)


@pytest.fixture
def store(tmp_path, tracking_uri, monkeypatch):
    """Overrides that put storage and tracking in tmp_path and serving on a port nobody listens on."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ["--set", f"storage_uri={tmp_path / 'store'}", "--set", f"tracking_uri={tracking_uri}",
            "--set", f"serving.port={_free_port()}"]


# ------------------------------------------------------------------------------------------ version, completion
def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"raymlops {raymlops.__version__}"


def test_completion_script_and_completions(monkeypatch):
    runner = CliRunner()
    # A script for a named shell (--show-completion detects the user's shell; Typer's switch makes it take a name).
    zsh = runner.invoke(app, [], prog_name="raymlops", env={"_RAYMLOPS_COMPLETE": "source_zsh"})
    assert zsh.output.lstrip().startswith("#compdef raymlops") and "_RAYMLOPS_COMPLETE=complete_zsh" in zsh.output
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="raymlops")
    assert script.exit_code == 0 and "_RAYMLOPS_COMPLETE=complete_bash" in script.output
    assert "complete -o default -F _raymlops_completion raymlops" in script.output
    # What the installed script asks for: the commands starting with what the user typed.
    done = runner.invoke(app, [], prog_name="raymlops",
                         env={"_RAYMLOPS_COMPLETE": "complete_bash", "COMP_WORDS": "raymlops fea", "COMP_CWORD": "1"})
    assert done.output.split() == ["features"]
    assert "--install-completion" in runner.invoke(app, ["--help"], terminal_width=200).output


# ------------------------------------------------------------------------------------------------------- --json
# Every command that prints data (not only a one-line message) takes --json.
DATA_COMMANDS = [
    ["status"], ["runs"], ["lineage"], ["events"], ["run"], ["validate"], ["predict"], ["deploy"], ["undeploy"],
    ["trigger"], ["gc"], ["init"], ["serve", "status"], ["serve", "weights"], ["controller", "status"],
    ["config", "show"], ["config", "schema"], ["schema", "show"], ["schema", "diff"], ["schema", "accept"],
    ["features", "list"], ["features", "describe"], ["features", "materialize"], ["features", "generate"],
    ["data", "generate"], ["pipeline", "list"],
]


def test_every_data_command_takes_json():
    import click
    import typer

    root = typer.main.get_command(app)
    missing = []
    for argv in DATA_COMMANDS:
        cmd = root
        for name in argv:
            cmd = cmd.get_command(click.Context(cmd), name)
        if not any("--json" in p.opts for p in cmd.params):
            missing.append(" ".join(argv))
    assert missing == []


def test_json_of_the_commands_that_need_no_ray(capsys, tmp_path, store):
    schema = _json(capsys, ["config", "schema", "--json"])
    assert schema["title"] == "Config"
    assert _json(capsys, ["config", "show", CONFIG, "--json", *store])["name"] == "churn"
    gen = _json(capsys, ["data", "generate", "--out", str(tmp_path / "landing"), "--rows", "300", "--days", "2",
                         "--json"])
    assert gen["rows"] == 600 and len(gen["files"]) == 2
    data = ["--data", str(tmp_path / "landing")]
    report = _json(capsys, ["validate", CONFIG, *data, "--json", *store])
    assert report["decision"] == "OK" and report["report"]["rows"] == 600 and report["schema_version"] == 1
    shown = _json(capsys, ["schema", "show", CONFIG, "--json", *store])
    assert shown["version"] == 1 and "monthly_charges" in json.dumps(shown)
    diff = _json(capsys, ["schema", "diff", CONFIG, "--json", *store])
    assert diff["version"] == 1 and diff["diff"] is None
    assert _json(capsys, ["runs", CONFIG, "--json", *store]) == []
    status = _json(capsys, ["status", CONFIG, "--json", *store])
    assert status["pipeline"] == "churn" and status["registry"]["versions"] == []
    gc = _json(capsys, ["gc", CONFIG, "--dry-run", "--json", *store])
    assert gc["dry_run"] is True
    # No controller yet: no events, and the note goes to stderr, not into the JSON lines.
    assert main(["events", CONFIG, "--json", *store]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no controller events" in out.err
    envs = _json(capsys, ["pipeline", "list", CONFIG, "--json", *store])
    assert set(envs) == {"staging", "production"} and envs["staging"]["current"] is None
    assert envs["production"]["history"] == []


def test_json_of_the_feature_commands(capsys, tmp_path):
    out = tmp_path / "fd"
    written = _json(capsys, ["features", "generate", "--out", str(out), "--customers", "20", "--days", "3", "--json"])
    assert set(written) == {"customer_profile", "customer_usage", "labels"}
    repo = tmp_path / "features.yaml"
    text = Path(CONFIG).with_name("features.yaml").read_text().replace("./.raymlops/feature-data", str(out))
    repo.write_text(text.replace("./.raymlops/features/online.sqlite", str(tmp_path / "online.sqlite")))
    listed = _json(capsys, ["features", "list", "--repo", str(repo), "--json"])
    assert {r["name"] for r in listed} >= {"customer", "customer_profile", "churn_model"}
    described = _json(capsys, ["features", "describe", "churn_model", "--repo", str(repo), "--json"])
    assert described["resolved"]["customer_usage"][0] == "monthly_charges"
    runs = _json(capsys, ["features", "materialize", "--repo", str(repo), "--full", "--end", "2026-01-05T00:00:00",
                          "--json"])
    assert {r["view"] for r in runs["views"]} == {"customer_profile", "customer_usage"}
    assert runs["online_store"]["type"] == "sqlite"


def test_a_raymlops_error_under_json_leaves_stdout_empty(capsys, store):
    assert main(["lineage", CONFIG, "7", "--json", *store]) != 0
    out = capsys.readouterr()
    assert out.out == "" and "error:" in out.err


# ------------------------------------------------------------------------------------------------------ init
def test_init_writes_a_project_that_validates_and_refuses_to_overwrite(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("RAYMLOPS_STORAGE", raising=False)
    project = tmp_path / "proj"
    done = _json(capsys, ["init", str(project), "--json"])
    for name in ("pipeline.yaml", "features.yaml"):
        assert str(project / name) in done["files"]
    assert (project / "data" / "landing").is_dir() and (project / "data" / "features" / "labels").is_dir()

    # A second init names the file it would overwrite and writes nothing; --force overwrites.
    before = (project / "pipeline.yaml").read_text()
    (project / "pipeline.yaml").write_text(before + "\n# mine\n")
    assert main(["init", str(project)]) == 2
    err = capsys.readouterr().err
    assert str(project / "pipeline.yaml") in err and "--force" in err
    assert (project / "pipeline.yaml").read_text().endswith("# mine\n")
    assert main(["init", str(project), "--force"]) == 0
    assert "cd " in capsys.readouterr().out and (project / "pipeline.yaml").read_text() == before

    # The starter config validates its example data (in process) and lists its feature repo, from the project dir.
    monkeypatch.chdir(project)
    assert _json(capsys, ["validate", "pipeline.yaml", "--json"])["decision"] == "OK"
    listed = _json(capsys, ["features", "list", "--repo", "features.yaml", "--json"])
    assert "churn_model" in {r["name"] for r in listed}


# ------------------------------------------------------------------------------------------------ quiet output
def test_ray_noise_goes_to_the_log_file_unless_verbose(tmp_path, capsys):
    from raymlops import _ray

    log = tmp_path / "logs" / "raymlops.log"
    serve_handlers = list(logging.getLogger("ray.serve").handlers)
    with _ray.cli_output(verbose=False) as handler:
        _ray.log_under(str(tmp_path))
        logging.getLogger("ray").warning("Token authentication is enabled for this Ray cluster")
        # ray.init(configure_logging=False) clears Ray's handlers: its records fall to logging.lastResort (pytest's
        # root handler hides that path here, so the handler is checked instead).
        assert logging.lastResort is handler
        warnings.warn("pkg_resources is deprecated as an API", UserWarning, stacklevel=1)
        _ray.raylet_message("WARNING: 8 PYTHON worker processes have been started")
        logging.getLogger("raymlops.control.statefile").warning("our own warning")
        serve = logging.getLogger("ray.serve")  # `import ray.serve` gives it a stderr handler, as here
        serve.addHandler(logging.StreamHandler())
        serve.warning("Deployed app 'churn' successfully")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "warning: our own warning\n"
    text = log.read_text()
    for line in ("Token authentication", "pkg_resources", "8 PYTHON worker", "Deployed app"):
        assert line in text
    assert "our own warning" not in text

    with _ray.cli_output(verbose=True):
        logging.getLogger("ray").warning("shown with -v")
        _ray.raylet_message("raylet shown with -v")
    out = capsys.readouterr()
    assert "shown with -v" in out.err and "raylet shown with -v" in out.out + out.err
    assert "shown with -v" not in log.read_text()
    # Outside the CLI (the Python API, tests) logging is as it was.
    assert not any(isinstance(h, _ray.LogFile) for h in logging.getLogger("ray").handlers)
    assert not isinstance(logging.lastResort, _ray.LogFile)
    assert "addHandler" not in vars(logging.getLogger("ray.serve"))
    assert logging.getLogger("ray.serve").handlers == serve_handlers


def test_verbose_flag_is_accepted(capsys):
    assert main(["-v", "config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Config"
