"""The service's settings: one table (serving/config.py), one parser per type, one parse per process tree.

- docs/serving.md's settings table is the code's table, row for row;
- a bound is applied to the number, not its spelling: BATCH_WAIT_MS and DRAIN_SECONDS (both ">= 0")
  take "0.00" alike, and every "> 0" setting refuses it;
- a bad value of any type is refused with one line naming the variable; under gunicorn that line is
  all the start prints, with exit status 1;
- the gunicorn master hands the workers its one parse: it writes no setting into os.environ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import requests
from test_serving_support import GUNICORN, ROOT, Gunicorn, free_port

from serving import config
from serving.config import ConfigError, Settings

PAGE = ROOT / "docs" / "serving.md"  # the settings table lives there; the README links to it
BEGIN = "<!-- settings table:"
END = "<!-- end of settings table -->"


def page_table() -> str:
    text = PAGE.read_text()
    start = text.index("\n", text.index(BEGIN)) + 1
    return text[start:text.index(END)]


def test_the_documented_settings_table_is_the_code_table():
    assert page_table() == config.markdown_table(), (
        "docs/serving.md's settings table differs from serving/config.py: paste the output of "
        "`python -m serving.config` between its markers")


def test_every_setting_is_in_the_table_once_with_type_default_bound_and_help():
    table = config.markdown_table().splitlines()[2:]
    names = [row.split("|")[1].strip().strip("`") for row in table]
    assert names == [item.name.upper() for item in dataclasses.fields(Settings) if "spec" in item.metadata]
    assert len(set(names)) == len(names)
    # THREADS was read by gunicorn.conf.py but missing from the table
    for name in ("THREADS", "WORKER_CONNECTIONS", "KEEPALIVE_REQUESTS", "DRAIN_SECONDS", "LOG_LEVEL"):
        assert name in names
    for row in table:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 5 and all(cells), row
        assert cells[1] in ("int", "float", "bool", "str", "path"), row


def test_the_python_m_command_prints_the_table():
    result = subprocess.run([sys.executable, "-m", "serving.config"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == config.markdown_table()


@pytest.mark.parametrize("name", ["BATCH_WAIT_MS", "DRAIN_SECONDS"])
@pytest.mark.parametrize("zero", ["0", "0.0", "0.00", " 0.000 ", "0e0", "-0"])
def test_zero_is_one_number_for_both_settings_where_zero_means_off(name, zero):
    """BATCH_WAIT_MS once matched the text "0" or "0.0" and refused "0.00"; DRAIN_SECONDS took any zero."""
    settings = Settings.from_environ({name: zero})
    assert getattr(settings, name.lower()) == 0.0
    assert str(getattr(settings, name.lower())) == "0.0"  # not -0.0


@pytest.mark.parametrize("name", ["BATCH_WAIT_MS", "DRAIN_SECONDS"])
@pytest.mark.parametrize("bad", ["-0.01", "-1", "nan", "inf", "soon", "1,5"])
def test_both_zero_means_off_settings_refuse_the_same_values(name, bad):
    with pytest.raises(ConfigError) as refused:
        Settings.from_environ({name: bad})
    assert str(refused.value) == f"{name} must be a number >= 0, got {bad!r}"


@pytest.mark.parametrize("name", ["MAX_UPLOAD_MB", "READ_TIMEOUT", "REQUEST_TIMEOUT", "GRACEFUL_TIMEOUT"])
@pytest.mark.parametrize("zero", ["0", "0.00"])
def test_limits_and_timeouts_refuse_zero_however_it_is_written(name, zero):
    with pytest.raises(ConfigError, match=f"^{name} must be a number > 0, got '{zero}'$"):
        Settings.from_environ({name: zero})


@pytest.mark.parametrize("name, text, message", [
    ("MAX_BATCH", "0", "MAX_BATCH must be an integer >= 1, got '0'"),
    ("MAX_BATCH", "2.5", "MAX_BATCH must be an integer >= 1, got '2.5'"),
    ("KEEPALIVE_REQUESTS", "-1", "KEEPALIVE_REQUESTS must be an integer >= 0, got '-1'"),
    ("THREADS", "many", "THREADS must be an integer >= 1, got 'many'"),
    ("PORT", "65536", "PORT must be an integer from 1 to 65535, got '65536'"),
    ("ACCESS_LOG", "maybe", "ACCESS_LOG must be 1 or 0 (or true/false, yes/no, on/off), got 'maybe'"),
    ("REUSE_PORT", "2", "REUSE_PORT must be 1 or 0 (or true/false, yes/no, on/off), got '2'"),
    ("PRECISION", "int4", "PRECISION must be one of auto, fp32, got 'int4'"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of debug, info, warning, error, critical, got 'loud'"),
    # a secret is never repeated
    ("API_TOKEN", "pass word", "API_TOKEN must be a token of letters, digits and -._~+/= only"),
])
def test_each_type_has_one_parser_with_one_message(name, text, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_environ({name: text})
    assert str(refused.value) == message


def test_values_are_typed_and_empty_means_unset(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\nsecond line\n")
    settings = Settings.from_environ({"ACCESS_LOG": "yes", "REUSE_PORT": "off", "THREADS": "4", "MAX_UPLOAD_MB": "2.5",
                                      "MODELS_DIR": str(tmp_path), "API_TOKEN_FILE": str(token_file),
                                      "PRECISION": "FP32", "WORKERS": "3", "DEFAULT_MODEL": "  "})
    assert (settings.access_log, settings.reuse_port, settings.threads) == (True, False, 4)
    assert settings.max_content_length == int(2.5 * 1024 * 1024)
    assert settings.models_dir == tmp_path and settings.api_token == "from-the-file"
    assert settings.precision == "fp32" and settings.default_model is None
    assert settings.intra_op_threads == max(1, config.usable_cpus() // 3)
    with pytest.raises(ConfigError, match="^set API_TOKEN or API_TOKEN_FILE, not both$"):
        Settings.from_environ({"API_TOKEN": "a", "API_TOKEN_FILE": str(token_file)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.threads = 8  # type: ignore[misc]
    # which variables were given (a default may be adjusted at start, a given value never is)
    assert settings.explicit == {"ACCESS_LOG", "REUSE_PORT", "THREADS", "MAX_UPLOAD_MB", "MODELS_DIR",
                                 "API_TOKEN_FILE", "PRECISION", "WORKERS"}


def test_overrides_win_over_the_environment_and_other_keys_pass_through():
    environ = {"MAX_BATCH": "8", "BATCH_WAIT_MS": "0.00"}
    flask_config = config.load_config({"MAX_BATCH": 3, "TESTING": True}, environ)
    assert {"MAX_BATCH": 3, "BATCH_WAIT_MS": 0.0, "TESTING": True}.items() <= flask_config.items()
    assert config.process_settings({"THREADS": "2", "DRAIN_SECONDS": "0.00"})["threads"] == 2


def test_active_hands_out_the_installed_object_unparsed(monkeypatch):
    installed = Settings.from_environ({"MAX_BATCH": "7"})
    monkeypatch.setattr(config, "_installed", None)
    config.install(installed)
    monkeypatch.setenv("MAX_BATCH", "9")  # a later change of the environment is not read again
    assert config.active() is installed
    assert config.active({"MAX_BATCH": 2}).max_batch == 2  # explicit overrides still parse


# ---- under gunicorn ------------------------------------------------------------------------------------

def gunicorn_start(env: dict[str, str], timeout: float = 60) -> tuple[int | None, str]:
    """gunicorn's exit status and stderr; (None, stderr) if it was still running after ``timeout`` s."""
    inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([str(GUNICORN), "--config", "serving/gunicorn.conf.py", "serving:create_app()"],
                            cwd=ROOT, env={**inherited, "HOST": "127.0.0.1", "PORT": str(free_port()), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the master and any worker it started
        return None, proc.communicate()[1]


@pytest.mark.parametrize("name, value, message", [
    ("ACCESS_LOG", "maybe", "ACCESS_LOG must be 1 or 0 (or true/false, yes/no, on/off), got 'maybe'"),
    ("BATCH_WAIT_MS", "-1", "BATCH_WAIT_MS must be a number >= 0, got '-1'"),
    ("THREADS", "0", "THREADS must be an integer >= 1, got '0'"),
])
def test_a_bad_setting_stops_gunicorn_with_one_line(name, value, message):
    status, stderr = gunicorn_start({name: value})
    assert status == 1
    assert stderr == f"cannot start the service: {message}\n"


def test_the_master_writes_no_setting_into_the_environment(weights, tmp_path):
    """The old master wrote DRAIN_SECONDS and INTRA_OP_THREADS into os.environ for its workers to parse again."""
    script = textwrap.dedent(f"""
        import json, logging, os, runpy, sys, types
        before = dict(os.environ)
        conf = runpy.run_path("serving/gunicorn.conf.py")
        server = types.SimpleNamespace(cfg=types.SimpleNamespace(address=[("127.0.0.1", {free_port()})],
                                                                 workers=conf["workers"]),
                                       log=logging.getLogger("test"))
        conf["on_starting"](server)
        changed = sorted(k for k in os.environ if os.environ[k] != before.get(k))
        from serving import config
        print(json.dumps({{"changed": changed, "installed": config.active() is conf["_settings"],
                          "drain": config.active().drain_seconds}}))
        conf["on_exit"](server)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "INTRA_OP_THREADS")}
    env.update(MODELS_DIR=str(weights), DRAIN_SECONDS="0.00", WORKERS="2", PORT=str(free_port()))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"changed": ["PROMETHEUS_MULTIPROC_DIR"], "installed": True, "drain": 0.0}


@pytest.mark.slow
def test_gunicorn_serves_with_zero_written_as_0_00(weights, tmp_path):
    """BATCH_WAIT_MS=0.00 stopped the old service at start; now it and DRAIN_SECONDS=0.00 are both "off"."""
    service = Gunicorn(tmp_path / "gunicorn.log", MODELS_DIR=str(weights), WORKERS="1", BATCH_WAIT_MS="0.00",
                       DRAIN_SECONDS="0.00", THREADS="3")
    service.start()
    try:
        service.wait_ready()
        assert requests.get(service.url + "/healthz", timeout=10).status_code == 200
    finally:
        service.stop()
    assert "cannot start" not in service.log()
