"""The HTTP gateway: routes (`videos/router.py`, `models_router.py`, `health_router.py`) → serving
(`videos/serving.py`, admission) → the engine boundary (`engine.py`: queue, job store, worker registry).
Speaks to the workers only through `contract/`; never imports torch, `models/`, `kernels/` or `worker/`.
The webhook deliverer (`webhooks.py`) is a separate process from the same package.
"""
