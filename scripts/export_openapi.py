"""Write the gateway's OpenAPI document to docs/openapi.json (or, with --check, fail when it differs).

    python scripts/export_openapi.py            # after changing a route, a request/response shape or an error
    python scripts/export_openapi.py --check    # what tests/unit/service/test_openapi.py asserts

The document does not depend on settings (auth on or off, storage, models served): it is built from a
dev-mode app that connects to nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "openapi.json"


def current() -> str:
    sys.path.insert(0, str(REPO))
    from contract.settings import Settings
    from service.app import create_app
    from service.openapi import openapi_json

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(dev_mode=True, storage={"backend": "local", "local_dir": tmp})  # type: ignore[arg-type]
        return openapi_json(create_app(settings))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/openapi.json is out of date")
    args = parser.parse_args()
    text = current()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            sys.stderr.write(f"{TARGET.relative_to(REPO)} is out of date: run python scripts/export_openapi.py\n")
            return 1
        return 0
    TARGET.write_text(text)
    sys.stdout.write(f"wrote {TARGET.relative_to(REPO)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
