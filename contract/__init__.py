"""What the gateway and the workers both speak: the model catalog, `GenerationParams` and the job
types, settings, Redis keys, the job store, the one queue, worker capabilities, object storage, the
egress guard and metric names. Torch-free and FastAPI-free: both processes import it.
"""
