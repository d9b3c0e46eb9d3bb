"""Error codes a job reports, by the exception's type (never by its text), and the worker's "auto"
device/dtype resolution."""

from __future__ import annotations

import torch
from rq.timeouts import JobTimeoutException

from contract.jobs import ErrorCode, ParamError
from worker.main import resolve_dtype
from worker.task import JobFailed, error_code


def test_error_codes_by_type():
    assert error_code(torch.cuda.OutOfMemoryError("CUDA out of memory")) is ErrorCode.out_of_memory
    assert error_code(torch.OutOfMemoryError("out of memory")) is ErrorCode.out_of_memory
    assert error_code(ParamError("sla_topk", "not honoured")) is ErrorCode.unsupported_param
    assert error_code(JobTimeoutException("too slow")) is ErrorCode.timeout
    assert error_code(JobFailed(ErrorCode.storage_error, "upload failed")) is ErrorCode.storage_error
    # Internal errors are not the client's fault, whatever their type or message says.
    assert error_code(ValueError("bad shape")) is ErrorCode.generation_failed
    assert error_code(RuntimeError("CUDA out of memory (a message, not the type)")) is ErrorCode.generation_failed


def test_auto_dtype_follows_the_device():
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cuda") == "float16"
