"""`turbovid`: the one console script.

    turbovid serve --dev [--port N]     gateway + wan-tiny worker + webhooks (+ embedded Redis)
    turbovid gateway                    the HTTP API (no torch import)
    turbovid worker [--model ID]        a GPU worker serving one model's queues ([--gpu N] | [--gpus N])
    turbovid webhooks                   webhook deliveries
    turbovid keys create NAME           a new API key (printed once)
    turbovid generate|convert|download  offline model commands (cli/models.py)
    turbovid bench [--model ID]         baseline vs ours, per stage and end to end (cli/bench.py)

Each subcommand imports what it needs when it runs, so `turbovid gateway` never loads torch.
Settings are built once here, from TURBOVID_* variables (and `.env`), and passed down; a bad
variable is one line naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from contract.settings import ConfigError, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _serve(args: argparse.Namespace) -> int:
    if not args.dev:
        print("turbovid serve runs the single-machine dev stack and needs --dev; in production run "
              "`turbovid gateway`, `turbovid worker` and `turbovid webhooks` as separate processes",
              file=sys.stderr)
        return 2
    from cli.devstack import dev_port, run_dev_stack

    port = args.port or dev_port()
    return run_dev_stack(port=port, env=os.environ, state_dir=Path(args.state_dir).resolve(), device=args.device)


def _gateway(args: argparse.Namespace) -> int:
    settings = load_settings()  # checked here once, so that a bad variable is one line, not a traceback per worker
    from service.server import ServerLimits, serve

    limits = ServerLimits(header_timeout_s=args.header_timeout)
    # each worker process builds its app (and its Redis pools) with gateway_app
    serve("cli.main:gateway_app", factory=True, host=settings.gateway.host, port=settings.gateway.port,
          workers=args.workers, limits=limits)
    return 0


def gateway_app() -> object:
    """The gateway's ASGI app from the environment: the entry point of each `turbovid gateway` process."""
    from service.app import create_app

    return create_app(load_settings())


def _worker(args: argparse.Namespace) -> int:
    settings = load_settings(worker_model=args.model)
    from worker.main import on_gpu, run_worker

    if args.gpus is not None:
        if args.gpu is not None:
            raise ConfigError("--gpu and --gpus together: --gpu N runs one rank on cuda:N, --gpus N runs N ranks "
                              "on cuda:0..N-1 (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        if args.gpus < 1:
            raise ConfigError(f"--gpus: {args.gpus} is not a number of ranks (1, 2, ...)")
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"gpus": args.gpus})})
    if args.gpu is not None:
        settings = on_gpu(settings, args.gpu)
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


def _bench(args: argparse.Namespace) -> int:
    from cli.bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from cli.models import add_model_commands

    parser = argparse.ArgumentParser(prog="turbovid", description="Fast Wan video generation service")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the whole stack on this machine (--dev)")
    s.add_argument("--dev", action="store_true", help="gateway + wan-tiny worker + webhooks, auth off")
    s.add_argument("--port", type=int, default=0, help="gateway port (default: 8000, or a free one when 8000 is taken)")
    s.add_argument("--device", default=None, help="worker device (default: cuda if available, else cpu)")
    s.add_argument("--state-dir", default=".turbovid/dev", help="local storage and weight cache")
    s.set_defaults(func=_serve)

    g = sub.add_parser("gateway", help="serve the HTTP API")
    g.add_argument("--workers", type=int, default=1, help="server processes sharing the port (about one per core)")
    g.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers (slow clients get a 408)")
    g.set_defaults(func=_gateway)

    w = sub.add_parser("worker", help="serve one model's queues on this machine's GPU")
    w.add_argument("--model", default=None, help="model id (default: TURBOVID_WORKER__MODEL)")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.add_argument("--gpu", type=int, default=None, metavar="N",
                   help="run on cuda:N with metrics port TURBOVID_WORKER__METRICS_PORT + N (one worker per GPU)")
    w.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="one worker on N GPUs (cuda:0..N-1, sequence parallel over NCCL; N CPU processes over "
                        "gloo with TURBOVID_WORKER__DEVICE=cpu); default TURBOVID_WORKER__GPUS (1)")
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

    from cli.bench import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="baseline vs ours on full-size random weights, per stage and end to end (GPU)")
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def warn_unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Log a warning for each TURBOVID_* variable that names no setting (a typo is otherwise silently
    ignored), with the closest real name; returns the unknown names."""
    import difflib

    from contract.settings import unknown_variables

    unknown = unknown_variables(environ)
    known = _setting_variables()
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        logging.getLogger("turbovid").warning("%s is not a TurboVid setting and is ignored%s", name,
                                              f" (did you mean {close[0]}?)" if close else "")
    return unknown


def _setting_variables() -> list[str]:
    from pydantic import BaseModel

    from contract.settings import Settings

    out = []
    for group, field in Settings.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += [f"TURBOVID_{group.upper()}__{name.upper()}" for name in sub.model_fields]
        else:
            out.append(f"TURBOVID_{group.upper()}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    warn_unknown_variables(os.environ)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # from the settings, or found at start (e.g. a taken metrics port)
        print(f"turbovid {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
