"""`python tests/integration/rank_worker.py`: a real `turbovid worker` (settings from TURBOVID_*, so
`TURBOVID_WORKER__GPUS=2` gives rank processes) whose ranks load the real pipeline
(`worker.main.load_model_pipeline`) plus one test hook before every DiT forward:

    RANK_TEST_DELAY_S      every rank sleeps this long, so that a job's denoise lasts long enough to act on
    RANK_TEST_STALL        a path: while that file exists, rank 0 blocks at the forward (what a device
                           sync behind a lost peer's NCCL op does on a GPU; gloo on CPU would raise instead)
    RANK_TEST_SLOW_DECODE  a path: while that file exists, every rank sleeps 0.5 s before the VAE's RGB
                           head, once per decoded chunk (a decode long enough to cancel in)
"""

from __future__ import annotations

import multiprocessing
import os
import time

from contract.settings import Settings


def load(settings: Settings, device: str, dtype: str):
    from worker.main import load_model_pipeline

    pipe = load_model_pipeline(settings, device, dtype)
    delay = float(os.environ.get("RANK_TEST_DELAY_S", "0"))
    stall = os.environ.get("RANK_TEST_STALL")
    rank0 = multiprocessing.parent_process() is None

    def hook(module, args) -> None:
        time.sleep(delay)
        while stall and rank0 and os.path.exists(stall):
            time.sleep(0.05)

    for module in pipe.transformers.values():
        module.register_forward_pre_hook(hook)
    slow = os.environ.get("RANK_TEST_SLOW_DECODE")

    def decode_hook(module, args) -> None:
        if slow and os.path.exists(slow):
            time.sleep(0.5)

    pipe.vae.decoder.head[-1].register_forward_pre_hook(decode_hook)
    return pipe


def main() -> int:
    import logging

    from worker.main import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_worker(Settings(), load=load)


if __name__ == "__main__":
    raise SystemExit(main())
