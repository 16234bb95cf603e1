"""The command line's coverage of the API, its --help, its --config TOML
file (flags win over the file), and its exit codes."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Prepared, echoscu, free_port, storescu
from dicom_storescp import S3Config, StoreScp, cli
from test_cli import Cli

# StoreScp keyword -> the flag's dest, where the names differ
RENAMED = {
    "grouping_strategy": "grouping",
    "extract_custom_tags": "extract_custom_tag",
    "custom_groups": "custom_group",
}
# StoreScp keywords without a flag of that name, and why
NOT_FLAGS = {
    "max_queued_events": "bounds scp.events() streams, which the command line does not use",
    "s3_config": "given key by key as --s3-* flags (checked below)",
}


def _dests() -> dict[str, str]:
    """dest -> option string of every flag."""
    return {
        a.dest: a.option_strings[0]
        for a in cli.build_parser()._actions  # noqa: SLF001
        if a.option_strings
    }


def test_every_storescp_option_has_a_flag_and_a_config_key() -> None:
    params = [p for p in inspect.signature(StoreScp.__init__).parameters if p != "self"]
    params = [p for p in params if p != "unknown"]
    dests = _dests()
    for name in params:
        if name in NOT_FLAGS:
            continue
        assert RENAMED.get(name, name) in dests, f"StoreScp option {name!r} has no flag"
        assert name in cli._CONFIG_KEYS, f"StoreScp option {name!r} has no --config key"
    # every s3_config key: a flag and a config key (secrets: only through files)
    for key in S3Config.__annotations__:
        if key in ("secret_key", "session_token"):
            assert f"s3_{key}_file" in dests
            assert f"{key}_file" in cli._S3_CONFIG_KEYS
        elif key == "check_on_start":
            assert "s3_no_check" in dests and key in cli._S3_CONFIG_KEYS
        else:
            assert f"s3_{key}" in dests, f"s3_config {key!r} has no flag"
            assert key in cli._S3_CONFIG_KEYS
    # and every config key leads to an existing flag
    for key, (dest, _) in {**cli._CONFIG_KEYS, **cli._S3_CONFIG_KEYS}.items():
        assert dest == "" or dest in dests, key


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line to its end (no stdin), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_storescp", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_help_is_grouped_and_documents_the_exit_codes() -> None:
    proc = _run_cli("--help")
    assert proc.returncode == 0
    text = proc.stdout
    headings = ["network:", "TLS", "negotiation:", "storage:", "S3 storage:", "output:"]
    positions = [text.index(h) for h in headings]
    assert positions == sorted(positions)
    assert "tag extraction and study completion:" in text
    assert "--config FILE.toml" in text
    epilog = text[text.index("exit codes:") :]
    for code in ("0  stopped gracefully", "1  the receiver cannot start", "2  bad usage"):
        assert code in epilog


def test_version() -> None:
    from dicom_storescp import __version__

    proc = _run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"dicom-storescp {__version__}"
    assert __version__.count(".") == 2


def test_config_file_runs_a_receiver_and_flags_override_it(
    tmp_path: Path, corpus: dict[str, Prepared]
) -> None:
    port = free_port()
    out_dir = tmp_path / "out"
    config = tmp_path / "scp.toml"
    config.write_text(
        f"""
port = {port}
host = "127.0.0.1"
ae_title = "FROM-FILE"
require_called_ae_title = true
out_dir = "{out_dir}"
json = false
extract_tags = ["PatientID", "Modality"]
grouping_strategy = "Flat"
study_timeout = 120
stats_interval = 0
acse_timeout = "none"
extract_custom_tags = [{{ tag = "00100020", name = "FromFileTag" }}]
"""
    )
    run = Cli(
        [sys.executable, "-m", "dicom_storescp", "--config", str(config)]
        + ["--ae-title", "FROM-FLAG", "--json", "--extract-custom-tag", "00100010=Who"]
    )
    try:
        _wait_port(run, port, "FROM-FLAG")
        obj = corpus["CT_small.dcm"]
        storescu(port, [obj.path], "-R", obj.flag, aec="FROM-FLAG")
        # the file's AE title was overridden: it is refused now
        assert storescu(port, [obj.path], aec="FROM-FILE", check=False).returncode != 0
        deadline = time.monotonic() + 15
        while True:
            event = json.loads(run.read_line(max(0.1, deadline - time.monotonic())))
            if event["event"] == "OnFileStored":
                break
        tags = event["tags"]
        # Flat grouping and extract_tags from the file; the flag's custom tag
        # replaced the file's list
        assert set(tags) == {"PatientID", "Modality", "Who"}, tags
        assert Path(event["file"]).is_relative_to(out_dir)
        assert run.interrupt() == 0
    finally:
        run.kill()


def _wait_port(run: Cli, port: int, aec: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise AssertionError("".join(run.stderr))
        if echoscu(port, aec=aec).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("not listening")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prot = 11112\n", "unknown key 'prot'"),
        ("[s3_config]\nbucket = 'b'\nbuckett = 'c'\n", "unknown key 's3_config.buckett'"),
        ("[s3_config]\nsecret_key = 'x'\n", "s3_config.secret_key"),
        ("port = '11112'\n", "port must be an integer"),
        ("extract_tags = 'PatientName'\n", "extract_tags must be a list of strings"),
        ("strict = 1\n", "strict must be true or false"),
        ("study_timeout = 0\n", "study_timeout must be a positive number"),
        ("custom_groups = ['a']\n", "custom_groups must be a table"),
        ("port = \n", "is not valid TOML"),
    ],
)
def test_config_errors_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(config), "--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert str(config) in err


def test_missing_config_file_and_missing_port_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--config", str(tmp_path / "nope.toml")])
    assert exc.value.code == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--port is required" in capsys.readouterr().err


def test_a_receiver_that_cannot_start_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a TLS certificate that exists but is not PEM: refused at start()
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    code = cli.main(
        ["--port", "0", "--out-dir", str(tmp_path / "out"), "--stats-interval", "0"]
        + ["--tls-cert", str(cert), "--tls-key", str(cert)]
    )
    assert code == 1
    assert "tls" in capsys.readouterr().err.lower()
    # a port in use
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        code = cli.main(
            ["--port", str(port), "--host", "127.0.0.1", "--out-dir", str(tmp_path / "o")]
        )
    assert code == 1
    assert str(port) in capsys.readouterr().err
