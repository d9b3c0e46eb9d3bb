from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cli.devstack import dev_environment, dev_models
from cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[3]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


def _turbovid(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TURBOVID_")}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**base, "PYTHONPATH": str(REPO), **env})


def test_gateway_entry_points_do_not_import_torch():
    # What `turbovid gateway` / `turbovid webhooks` load before serving.
    out = _run("import sys, cli.main, service.app, service.webhooks, service.auth; cli.main.build_parser(); "
               "print('torch' in sys.modules)")
    assert out == "False"


def test_parser_has_service_and_model_commands():
    parser = build_parser()
    args = parser.parse_args(["worker", "--model", "wan-tiny", "--burst"])
    assert (args.model, args.burst) == ("wan-tiny", True)
    assert parser.parse_args(["serve", "--dev", "--port", "8123"]).port == 8123
    assert parser.parse_args(["keys", "create", "alice"]).name == "alice"
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"serve", "gateway", "worker", "webhooks", "keys", "generate", "convert", "download"} <= set(sub.choices)


def test_serve_without_dev_refuses(capsys):
    assert main(["serve"]) == 2
    assert "--dev" in capsys.readouterr().err


def test_configuration_error_is_one_line_naming_the_variable_and_exit_2(tmp_path):
    for command, env, variable in (
        (["gateway"], {"TURBOVID_DEV_MODE": "true", "TURBOVID_QUEUE__HEARTBEAT_S": "-1"},
         "TURBOVID_QUEUE__HEARTBEAT_S"),
        (["worker"], {"TURBOVID_DEV_MODE": "true", "TURBOVID_WORKER__DTYPE": "float8"}, "TURBOVID_WORKER__DTYPE"),
        # a cross-field check: outside dev mode the built-in webhook secret is refused
        (["keys", "create", "x"], {}, "TURBOVID_WEBHOOKS__SECRET"),
    ):
        proc = _turbovid(*command, env=env, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"turbovid {command[0]}: configuration error:") and variable in lines[0]


def test_dev_environment_forces_dev_values_but_keeps_user_storage(tmp_path):
    env = dev_environment({"TURBOVID_STORAGE__BACKEND": "s3", "TURBOVID_AUTH__ENABLED": "true", "PATH": "/bin"},
                          port=8123, redis_url="redis://127.0.0.1:7000/0", metrics_port=9200, device="cpu",
                          state_dir=tmp_path)
    assert env["TURBOVID_AUTH__ENABLED"] == "false" and env["TURBOVID_DEV_MODE"] == "true"
    assert env["TURBOVID_STORAGE__BACKEND"] == "s3" and env["PATH"] == "/bin"
    assert env["TURBOVID_REDIS__URL"] == "redis://127.0.0.1:7000/0"
    # The model list comes from the catalog: wan-tiny and what its card also serves.
    assert json.loads(env["TURBOVID_GATEWAY__MODELS"]) == dev_models() == ["wan-tiny", "wan-tiny-i2v"]
    # The children build Settings from exactly these variables: they must validate, and the worker's
    # "auto" dtype is float32 on the CPU (bf16 matmuls are slow or missing on CPUs).
    code = ("import os, json; os.environ.update(json.loads(input())); from contract.settings import Settings; "
            "from worker.main import resolve_dtype; s = Settings(); "
            "print(s.gateway.port, s.worker.metrics_port, s.auth.enabled, s.worker.device, "
            "resolve_dtype(s.worker.dtype, s.worker.device), s.egress.allow_private_targets)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, input=json.dumps(env), text=True,
                         capture_output=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/bin"}).stdout
    assert out.split() == ["8123", "9200", "False", "cpu", "float32", "True"]


def test_dev_environment_leaves_the_device_to_the_worker_when_not_given(tmp_path):
    env = dev_environment({}, port=1, redis_url="redis://x/0", metrics_port=2, device=None, state_dir=tmp_path)
    assert env["TURBOVID_WORKER__DEVICE"] == "auto" and env["TURBOVID_WORKER__DTYPE"] == "auto"


def test_download_offers_the_catalog_models_with_published_files(capsys):
    parser = build_parser()
    assert parser.parse_args(["download", "wan2.2-i2v-a14b", "--full-precision"]).full_precision
    try:
        parser.parse_args(["download", "wan-tiny"])  # built locally, nothing to download
    except SystemExit as exc:
        assert exc.code == 2 and "wan-tiny" in capsys.readouterr().err
    else:
        raise AssertionError("wan-tiny has no downloads and must be refused")


def test_unknown_turbovid_variables_are_warned_at_start_with_the_closest_name(tmp_path):
    # `serve` without --dev exits at once: the warning comes before any subcommand runs
    proc = _turbovid("serve", env={"TURBOVID_QUEUE__HEARTBEET_S": "5", "TURBOVID_NOPE": "1",
                                   "TURBOVID_QUEUE__HEARTBEAT_S": "5"}, cwd=tmp_path)
    assert proc.returncode == 2
    warned = [ln for ln in proc.stderr.splitlines() if "is not a TurboVid setting" in ln]
    assert len(warned) == 2, proc.stderr
    assert any("TURBOVID_QUEUE__HEARTBEET_S" in ln and "did you mean TURBOVID_QUEUE__HEARTBEAT_S?" in ln
               for ln in warned)
    assert any("TURBOVID_NOPE" in ln for ln in warned)
    assert not any("TURBOVID_QUEUE__HEARTBEAT_S is not" in ln for ln in warned)


def test_worker_gpu_flag_sets_the_device_and_a_distinct_metrics_port():
    from contract.settings import ConfigError, Settings
    from worker.main import on_gpu

    args = build_parser().parse_args(["worker", "--gpu", "3"])
    assert args.gpu == 3
    base = Settings(dev_mode=True, worker={"metrics_port": 9101})
    ports = {on_gpu(base, n).worker.metrics_port for n in range(4)}
    assert ports == {9101, 9102, 9103, 9104}
    assert on_gpu(base, 2).worker.device == "cuda:2" and base.worker.device == "auto"
    assert on_gpu(Settings(dev_mode=True, worker={"metrics_port": 0}), 5).worker.metrics_port == 0
    try:
        on_gpu(base, -1)
    except ConfigError as exc:
        assert "--gpu" in str(exc)
    else:
        raise AssertionError("a negative GPU index must be refused")


def test_taken_metrics_port_is_one_line_naming_the_port_and_the_setting(tmp_path):
    import socket

    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = _turbovid("worker", env={"TURBOVID_DEV_MODE": "true", "TURBOVID_WORKER__DEVICE": "cpu",
                                        "TURBOVID_WORKER__METRICS_PORT": str(port)}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "configuration error" in ln]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"port {port}" in errors[0] and "TURBOVID_WORKER__METRICS_PORT" in errors[0]


def test_worker_on_a_gpu_the_host_lacks_is_one_line(tmp_path):
    import torch

    missing = torch.cuda.device_count() if torch.cuda.is_available() else 0
    proc = _turbovid("worker", "--gpu", str(missing), env={"TURBOVID_DEV_MODE": "true",
                                                          "TURBOVID_WORKER__METRICS_PORT": "0"}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "configuration error" in ln]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cuda:{missing} does not exist" in errors[0] and "--gpu" in errors[0]
