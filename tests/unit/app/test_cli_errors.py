"""User mistakes on the command line: one line that names the flag, exit code 2, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from snnrm.cli import main


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """`snnrm run` configures structlog for the process (caching loggers); later tests capture logs themselves."""
    monkeypatch.setattr("snnrm.cli.configure_logging", lambda *_args, **_kw: None)
    monkeypatch.setattr("snnrm.cli_controller.configure_logging", lambda *_args, **_kw: None)


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return errors[0]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["run", "--sim-chips", "0"], {}, "--sim-chips (or SNNRM_SIM_CHIPS)"),
        ([], {"SNNRM_SIM_CHIPS": "0"}, "--sim-chips (or SNNRM_SIM_CHIPS)"),
        (["run", "--http", "127.0.0.1:99999"], {}, "port 99999 is out of range"),
        (["run", "--sample-period", "-1"], {}, "--sample-period (or SNNRM_SAMPLE_PERIOD)"),
        (["demo", "--http", "localhost:123456"], {}, "--http: expected host:port"),
        (["demo", "--sim-chips", "0"], {}, "--sim-chips (SNNRM_SIM_CHIPS)"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(args: list[str], env: dict[str, str], expected: str) -> None:
    code, output = _run(args or ["run"], env)
    assert code == 2
    assert expected in _one_error_line(output)


def _daemon_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--kubelet-dir",
        str(tmp_path),
        "--state-dir",
        str(tmp_path / "state"),
        "--cdi-dir",
        str(tmp_path / "cdi"),
        "--sim-chips",
        "1",
        *extra,
    ]


def test_missing_sysfs_root_names_the_flag(tmp_path: Path) -> None:
    code, output = _run(
        _daemon_args(tmp_path, "--backend", "sysfs", "--sysfs-root", str(tmp_path / "absent"), "--http", "127.0.0.1:0")
    )
    assert code == 2
    line = _one_error_line(output)
    assert "--backend sysfs" in line
    assert "--sysfs-root" in line


def test_port_in_use_suggests_the_flag(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = _run(_daemon_args(tmp_path, "--http", f"127.0.0.1:{port}"))
    assert code == 2
    line = _one_error_line(output)
    assert f"--http 127.0.0.1:{port}: address already in use" in line
    assert "SNNRM_HTTP" in line


def test_config_file_typo_is_named(tmp_path: Path) -> None:
    f = tmp_path / "snnrm.yaml"
    f.write_text("sim_chps: 2\n")
    code, output = _run(["run", "--config", str(f)])
    assert code == 2
    assert "unknown key 'sim_chps' (did you mean 'sim_chips'?)" in _one_error_line(output)


@pytest.mark.parametrize("flag", ["--state-dir", "--cdi-dir"])
def test_unwritable_state_or_cdi_dir_is_one_line(tmp_path: Path, flag: str) -> None:
    """Issue 16: a directory Allocate cannot write to stops the daemon at start, naming the flag."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    dirs = {"--state-dir": tmp_path / "state", "--cdi-dir": tmp_path / "cdi"}
    dirs[flag] = blocker / "sub"
    code, output = _run(
        [
            "run",
            "--kubelet-dir",
            str(tmp_path),
            "--http",
            "127.0.0.1:0",
            "--state-dir",
            str(dirs["--state-dir"]),
            "--cdi-dir",
            str(dirs["--cdi-dir"]),
        ]
    )
    assert code == 2
    line = _one_error_line(output)
    assert f"{flag} {blocker / 'sub'}: cannot write there" in line


def test_an_http_host_that_does_not_resolve_is_one_line(tmp_path: Path) -> None:
    code, output = _run(_daemon_args(tmp_path, "--http", "nonexistent.invalid:0"))  # .invalid never resolves
    assert code == 2
    assert "--http nonexistent.invalid:0: cannot resolve the host" in _one_error_line(output)


def test_a_block_larger_than_any_chip_is_refused_at_start(tmp_path: Path) -> None:
    """A 128-core Loihi 2 chip is 256,000 KEPS: a bigger block would leave the node no event-throughput device."""
    code, output = _run(_daemon_args(tmp_path, "--http", "127.0.0.1:0", "--block-keps", "1e6"))
    assert code == 2
    line = _one_error_line(output)
    assert "--block-keps 1e+06: event-throughput block size 1e+06 KEPS is more than any chip's throughput" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["demo", "--sim-seed", "-1"], "Invalid value for '--sim-seed'"),
        (["bench", "--duration", "nan", "--no-readme", "--no-plots"], "--duration must be a number of simulated"),
        (["bench", "--seeds", "0"], "Invalid value for '--seeds'"),
    ],
)
def test_other_commands_refuse_bad_numbers_in_one_line(args: list[str], expected: str) -> None:
    code, output = _run(args)
    assert code == 2
    assert expected in _one_error_line(output)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lease-duration", "nan"], "Invalid value for '--lease-duration'"),
        (["--lease-duration", "inf"], "Invalid value for '--lease-duration'"),
        (["--reservation-ttl", "-5"], "Invalid value for '--reservation-ttl'"),
        (["--summary-stale-after", "nan"], "Invalid value for '--summary-stale-after'"),
        (["--lease-name", ""], "'' is not a Lease name"),
        (["--namespace", "Bad NS!"], "'Bad NS!' is not a namespace name"),
        (["--extender-prefix", "a b{x}"], "is not a URL path of plain segments"),
        (["--http", "127.0.0.1:\u0661\u0662\u0663"], "expected host:port"),
    ],
)
def test_controller_flags_are_checked_before_anything_starts(tmp_path: Path, args: list[str], expected: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    code, output = _run(["controller", "--kubeconfig", str(kubeconfig), *args])
    assert code == 2
    assert expected in _one_error_line(output)


def test_controller_port_in_use_and_empty_kubeconfig_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    code, output = _run(["controller", "--kubeconfig", str(empty), "--http", "127.0.0.1:0"])
    assert code == 2
    assert "is not a kubeconfig: empty, or not a YAML mapping" in _one_error_line(output)
    # An apiserver nobody answers at: the HTTP server binds (and fails) without waiting for it.
    unanswered = tmp_path / "kubeconfig"
    unanswered.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = _run(["controller", "--kubeconfig", str(unanswered), "--http", f"127.0.0.1:{port}"])
    assert code == 2
    assert f"--http 127.0.0.1:{port}: address already in use" in _one_error_line(output)
    assert "Usage:" not in output
