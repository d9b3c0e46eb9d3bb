"""`turbovid`: the one console script.

    turbovid serve --dev [--port N]     gateway + wan-tiny worker + webhooks (+ embedded Redis)
    turbovid gateway                    the HTTP API (no torch import)
    turbovid worker [--model ID]        a GPU worker serving one model's queues
    turbovid webhooks                   webhook deliveries
    turbovid keys create NAME           a new API key (printed once)
    turbovid generate|convert|download  offline model commands (cli/models.py)

Each subcommand imports what it needs when it runs, so `turbovid gateway` never loads torch.
Settings are built once here, from TURBOVID_* variables (and `.env`), and passed down; a bad
variable is one line naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contract.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ConfigError(Exception):
    """The environment does not make a valid `Settings`; the message names the variable."""


def load_settings(*, worker_model: str | None = None) -> Settings:
    """`Settings()` from the environment, or ConfigError with one line naming each bad variable."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from contract.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(err) for err in exc.errors())) from None
    except SettingsError as exc:  # a variable that should hold JSON (a list, a dict) does not parse
        raise ConfigError(f"{exc} (check the TURBOVID_* variables holding lists or objects: JSON)") from None
    if worker_model is not None:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"model": worker_model})})
    return settings


def _describe(err: object) -> str:
    """One error of a Settings ValidationError as `TURBOVID_GROUP__FIELD: message`."""
    assert isinstance(err, dict)
    loc = [str(p) for p in err.get("loc", ())]
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:  # a cross-field check: its message names the variables
        return message
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {str(got)[:80]!r})"
    return f"TURBOVID_{'__'.join(loc[:2]).upper()}: {message}{shown}"


def _serve(args: argparse.Namespace) -> int:
    if not args.dev:
        print("turbovid serve runs the single-machine dev stack and needs --dev; in production run "
              "`turbovid gateway`, `turbovid worker` and `turbovid webhooks` as separate processes",
              file=sys.stderr)
        return 2
    from cli.devstack import free_port, run_dev_stack

    port = args.port or free_port()
    return run_dev_stack(port=port, env=os.environ, state_dir=Path(args.state_dir).resolve(), device=args.device)


def _gateway(args: argparse.Namespace) -> int:
    settings = load_settings()
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.gateway.host, port=settings.gateway.port,
                proxy_headers=True, log_level="info")
    return 0


def _worker(args: argparse.Namespace) -> int:
    settings = load_settings(worker_model=args.model)
    from worker.main import run_worker

    return run_worker(settings, burst=args.burst)


def _webhooks(args: argparse.Namespace) -> int:
    settings = load_settings()
    from service.webhooks import run_webhook_worker

    run_webhook_worker(settings, burst=args.burst)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    settings = load_settings()
    from service.auth import create_api_key

    key = create_api_key(settings, args.name)
    print(key)
    print(f"created API key {args.name!r}; it is shown only once", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cli.models import add_model_commands

    parser = argparse.ArgumentParser(prog="turbovid", description="Fast Wan video generation service")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the whole stack on this machine (--dev)")
    s.add_argument("--dev", action="store_true", help="gateway + wan-tiny worker + webhooks, auth off")
    s.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    s.add_argument("--device", default=None, help="worker device (default: cuda if available, else cpu)")
    s.add_argument("--state-dir", default=".turbovid/dev", help="local storage and weight cache")
    s.set_defaults(func=_serve)

    g = sub.add_parser("gateway", help="serve the HTTP API")
    g.set_defaults(func=_gateway)

    w = sub.add_parser("worker", help="serve one model's queues on this machine's GPU")
    w.add_argument("--model", default=None, help="model id (default: TURBOVID_WORKER__MODEL)")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.set_defaults(func=_worker)

    h = sub.add_parser("webhooks", help="deliver webhooks")
    h.add_argument("--burst", action="store_true", help="deliver what is queued, then exit")
    h.set_defaults(func=_webhooks)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create an API key and print it once")
    kc.add_argument("name")
    kc.set_defaults(func=_keys_create)

    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"turbovid {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
