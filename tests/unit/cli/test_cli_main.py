from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.cli import build_parser, main
from worker.devstack import DEV_MODELS, dev_environment

REPO = Path(__file__).resolve().parents[3]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_gateway_entry_points_do_not_import_torch():
    # What `turbovid gateway` / `turbovid webhooks` load before serving.
    out = _run("import sys, worker.cli, service.app, service.cli, service.webhooks; worker.cli.build_parser(); "
               "print('torch' in sys.modules)")
    assert out == "False"


def test_parser_has_service_and_model_commands():
    parser = build_parser()
    args = parser.parse_args(["worker", "--model", "wan-tiny", "--also-serve", "wan-tiny-i2v"])
    assert (args.model, args.also_serve, args.burst) == ("wan-tiny", ["wan-tiny-i2v"], False)
    assert parser.parse_args(["serve", "--dev", "--port", "8123"]).port == 8123
    assert parser.parse_args(["keys", "create", "alice"]).name == "alice"
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"serve", "gateway", "worker", "webhooks", "keys", "generate", "convert", "download"} <= set(sub.choices)


def test_serve_without_dev_refuses(capsys):
    assert main(["serve"]) == 2
    assert "--dev" in capsys.readouterr().err


def test_dev_environment_forces_dev_values_but_keeps_user_storage(tmp_path):
    env = dev_environment({"TURBOVID_STORAGE__BACKEND": "s3", "TURBOVID_AUTH__ENABLED": "true", "PATH": "/bin"},
                          port=8123, redis_url="redis://127.0.0.1:7000/0", metrics_port=9200, device="cpu",
                          state_dir=tmp_path)
    assert env["TURBOVID_AUTH__ENABLED"] == "false" and env["TURBOVID_DEV_MODE"] == "true"
    assert env["TURBOVID_STORAGE__BACKEND"] == "s3" and env["PATH"] == "/bin"
    assert env["TURBOVID_REDIS__URL"] == "redis://127.0.0.1:7000/0"
    assert json.loads(env["TURBOVID_GATEWAY__MODELS"]) == list(DEV_MODELS)
    assert env["TURBOVID_WORKER__DTYPE"] == "float32"  # bf16 matmuls are slow or missing on CPUs
    # The children build Settings from exactly these variables: they must validate.
    code = ("import os, json; os.environ.update(json.loads(input())); from contract.settings import Settings; "
            "s = Settings(); print(s.gateway.port, s.worker.metrics_port, s.auth.enabled, s.worker.device)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, input=json.dumps(env), text=True,
                         capture_output=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/bin"}).stdout
    assert out.split() == ["8123", "9200", "False", "cpu"]
