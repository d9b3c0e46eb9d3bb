"""`turbovid`: the one console script.

    turbovid serve --dev [--port N]     gateway + wan-tiny worker + webhooks (+ embedded Redis)
    turbovid gateway                    the HTTP API (no torch import)
    turbovid worker [--model ID]        a GPU worker serving one model's queue
    turbovid webhooks                   webhook deliveries
    turbovid keys create NAME           a new API key (printed once)
    turbovid generate|convert|download  offline model commands (models/cli.py)

Each subcommand imports what it needs when it runs, so `turbovid gateway` never loads torch.
Settings are built once here, from TURBOVID_* variables, and passed down.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings(model: str | None = None):  # type: ignore[no-untyped-def]
    from contract.settings import Settings

    settings = Settings()
    if model is not None:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"model": model})})
    return settings


def _serve(args: argparse.Namespace) -> int:
    if not args.dev:
        print("turbovid serve runs the single-machine dev stack and needs --dev; in production run "
              "`turbovid gateway`, `turbovid worker` and `turbovid webhooks` as separate processes",
              file=sys.stderr)
        return 2
    from worker.devstack import free_port, run_dev_stack

    port = args.port or free_port()
    return run_dev_stack(port=port, env=os.environ, state_dir=Path(args.state_dir).resolve(), device=args.device)


def _gateway(args: argparse.Namespace) -> int:
    from service.cli import run_gateway

    run_gateway(_settings())
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    return run_worker(_settings(args.model), burst=args.burst, also_serve=args.also_serve)


def _webhooks(args: argparse.Namespace) -> int:
    from service.cli import run_webhook_worker

    run_webhook_worker(_settings())
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from service.cli import create_api_key

    key = create_api_key(_settings(), args.name)
    print(key)
    print(f"created API key {args.name!r}; it is shown only once", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    w = sub.add_parser("worker", help="serve one model's queue on this machine's GPU")
    w.add_argument("--model", default=None, help="model id (default: TURBOVID_WORKER__MODEL)")
    w.add_argument("--also-serve", action="append", default=[], metavar="QUEUE",
                   help="another model id whose queue this worker's pipeline also serves (repeatable)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.set_defaults(func=_worker)

    h = sub.add_parser("webhooks", help="deliver webhooks")
    h.set_defaults(func=_webhooks)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create an API key and print it once")
    kc.add_argument("name")
    kc.set_defaults(func=_keys_create)

    try:
        from models.cli import add_model_commands
    except ImportError:
        pass
    else:
        add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
