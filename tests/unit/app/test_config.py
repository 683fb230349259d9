"""Config: one validated object from file, env and flags, with clear errors."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from snnrm.cli import main
from snnrm.config import Config, ConfigError, load_config


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("sim-chips: 8\nhttp: 0.0.0.0:9500\nsample_period: 0.5\n")
    cfg = load_config(f, sim_chips=2, http=None)
    assert cfg.sim_chips == 2
    assert (cfg.http_host, cfg.http_port) == ("0.0.0.0", 9500)
    assert cfg.sample_period == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"http": "nonsense"}, r"--http \(or SNNRM_HTTP\): expected host:port"),
        ({"http": "127.0.0.1:70000"}, r"--http \(or SNNRM_HTTP\): port 70000 is out of range 0-65535"),
        ({"sim_chips": 0}, r"--sim-chips \(or SNNRM_SIM_CHIPS\): .*greater than or equal to 1, got 0"),
        ({"backend": "gpu"}, r"--backend \(or SNNRM_BACKEND\)"),
        ({"no_such_flag": 1}, "unknown key 'no_such_flag'"),
        # Found by an outside audit: each of these started a daemon, or failed later with a traceback.
        ({"http": "127.0.0.1:\u0661\u0662\u0663"}, r"--http \(or SNNRM_HTTP\): expected host:port"),
        ({"sim_seed": -1}, r"--sim-seed \(or SNNRM_SIM_SEED\): .*greater than or equal to 0"),
        ({"sim_chips": True}, r"--sim-chips \(or SNNRM_SIM_CHIPS\): .*valid integer"),
        ({"block_keps": float("inf")}, r"--block-keps \(or SNNRM_BLOCK_KEPS\): .*finite"),
        ({"block_keps": float("nan")}, r"--block-keps \(or SNNRM_BLOCK_KEPS\): .*finite"),
        ({"block_keps": 1e-15}, r"--block-keps \(or SNNRM_BLOCK_KEPS\): .*greater than or equal to 1"),
        ({"sample_period": float("nan")}, r"--sample-period \(or SNNRM_SAMPLE_PERIOD\): .*finite"),
        ({"sim_chips": 4096, "sim_cores": 4096}, r"16,777,216 cores; a node has at most 16,384"),
        ({"sim_chips": 129}, r"129 x 128 cores per chip is 16,512 cores"),  # the preset's chip size counts too
    ],
)
def test_bad_values_are_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, **overrides)


def test_the_largest_node_is_accepted_and_the_size_limit_is_the_sim_backends() -> None:
    assert load_config(None, sim_chips=128).sim_chips == 128  # 128 x 128 = 16,384 cores, the benchmarks' node
    assert load_config(None, backend="sysfs", sim_chips=4096, sim_cores=4096).backend == "sysfs"


def test_a_file_that_spells_one_setting_twice_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("sim-chips: 2\nsim_chips: 3\n")  # YAML would keep the last one silently
    with pytest.raises(ConfigError, match="'sim-chips' and 'sim_chips' set the same setting"):
        load_config(f)


def test_a_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match=r"--config .*c\.yaml: cannot read it"):
        load_config(f)


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(f)


def test_defaults_match_the_command_contract() -> None:
    cfg = Config()
    assert cfg.backend == "sim"
    assert str(cfg.kubelet_dir) == "/var/lib/kubelet/device-plugins"


def test_every_run_flag_reads_its_environment_variable() -> None:
    """`snnrm run --help` documents SNNRM_<FLAG> for each flag, and a bad env value is a usage error."""
    runner = CliRunner()
    help_text = runner.invoke(main, ["run", "--help"]).output
    for env in ("SNNRM_KUBELET_DIR", "SNNRM_HTTP", "SNNRM_SIM_CHIPS", "SNNRM_SIM_CORES", "SNNRM_BACKEND"):
        assert env in help_text
    result = runner.invoke(main, ["run"], env={"SNNRM_HTTP": "not-a-port"})
    assert result.exit_code == 2
    assert "expected host:port" in result.output


def test_demo_reads_snnrm_demo_seconds() -> None:
    assert "SNNRM_DEMO_SECONDS" in CliRunner().invoke(main, ["demo", "--help"]).output


def test_file_typos_name_the_file_and_suggest_the_key(tmp_path: Path) -> None:
    f = tmp_path / "snnrm.yaml"
    f.write_text("sim_chip: 3\nplacement:\n  enabeld: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert f"{f}: unknown key 'sim_chip' (did you mean 'sim_chips'?)" in str(e.value)
    assert f"{f}: unknown key 'placement.enabeld' (did you mean 'placement.enabled'?)" in str(e.value)


def test_file_values_are_named_by_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "snnrm.yaml"
    f.write_text("sim_chips: -3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: sim_chips: .*got -3$"):
        load_config(f)


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"--config {f}: cannot read it")
    assert "\n" not in str(e.value)


def test_socket_names_are_the_ones_the_plugins_create() -> None:
    from snnrm.config import SOCKET_NAMES
    from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
    from snnrm.dra.plugin import SERVICE_SOCKET, registration_socket_name
    from snnrm.kubelet.wire import plugin_socket_name

    plugin_sockets = [plugin_socket_name(NEURON_CORE), plugin_socket_name(EVENT_THROUGHPUT)]
    assert SOCKET_NAMES["kubelet_dir"] == max(plugin_sockets, key=len)
    assert SOCKET_NAMES["dra_registry_dir"] == registration_socket_name("snnrm.io")
    assert SOCKET_NAMES["dra_plugin_dir"] == SERVICE_SOCKET


@pytest.mark.parametrize("key", ["kubelet_dir", "dra_registry_dir", "dra_plugin_dir"])
def test_socket_directory_too_deep_for_a_unix_socket_is_named(key: str) -> None:
    flag = "--" + key.replace("_", "-")
    mode = "on"  # device plugin and DRA sockets both
    with pytest.raises(ConfigError, match=rf"{flag}.*too long for the unix sockets.*limit is 107"):
        load_config(dra=mode, **{key: Path("/tmp/" + "d" * 100)})
    load_config(dra=mode, **{key: Path("/tmp/" + "d" * 70)})  # fits even the longest name (27 bytes)


def test_a_directory_that_gets_no_socket_in_this_mode_may_be_long() -> None:
    deep = Path("/tmp/" + "d" * 90)
    load_config(dra="only", kubelet_dir=deep)  # no device plugin serves there
    load_config(dra="off", dra_registry_dir=deep, dra_plugin_dir=deep)  # no DRA plugin
