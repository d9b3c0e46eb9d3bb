"""Every Redis key TurboVid writes (besides RQ's own), in one table. All start with the prefix
(`settings.redis.key_prefix`, default "turbovid").

| key | type | written by | what |
|---|---|---|---|
| `<p>:job:<id>` | hash | jobstore | spec, status, progress, timestamps, timings, output, error, ... |
| `<p>:owner:<owner>` | zset | jobstore | the owner's job ids by creation time (listing, tenancy) |
| `<p>:active:<owner>` | zset (score: reserved at) | jobstore (only) | the owner's unfinished job ids (concurrency slots) |
| `<p>:cancel:<id>` | string | jobstore | cancel flag, checked by the worker at every step |
| `<p>:events:<id>` | stream | worker, gateway (contract/events.py) | the job's live events (SSE) |
| `<p>:idem:<owner>:<key>` | string | gateway | Idempotency-Key claim (SET NX) |
| `<p>:idemjob:<id>` | string | gateway | the Idempotency-Key that made a job (DELETE frees it) |
| `<p>:rl:<owner>:<minute>` | string | gateway | per-minute creation counter |
| `<p>:apikeys`, `<p>:apikeys:names` | hash | gateway, `turbovid keys` | hashed API keys and their names |
| `<p>:lease:<id>` | string | worker | the running job's lease (TTL = 3 heartbeats) |
| `<p>:crashes:<id>` | string | reaper | how many times the job lost its worker |
| `<p>:reap:<id>` | string | reaper | lock so that one reaper acts on a job |
| `<p>:sweep:slots` | string | worker | lock so that one worker per interval sweeps leaked slots |
| `<p>:orphan:<id>` | string | worker (sweep) | when a queued job was first seen with nothing on its queue |
| `<p>:worker:<name>` | string | worker | the worker's advertised capabilities (JSON), TTL = liveness |
| `<p>:workers:<model>` | set | worker | names of workers that registered for a model's queue |

The RQ job id equals the TurboVid job id.
"""

from __future__ import annotations

from dataclasses import dataclass


def text(reply: object) -> str:
    """A Redis reply item as text: bytes (a client without decode_responses) decoded as UTF-8, anything else
    through str()."""
    return reply.decode() if isinstance(reply, bytes) else str(reply)


@dataclass(frozen=True)
class Keys:
    prefix: str = "turbovid"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    def active(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

    def idempotency_of(self, job_id: str) -> str:
        return f"{self.prefix}:idemjob:{job_id}"

    def rate(self, owner: str, window: int) -> str:
        return f"{self.prefix}:rl:{owner}:{window}"

    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"

    def api_key_names(self) -> str:
        return f"{self.prefix}:apikeys:names"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def crashes(self, job_id: str) -> str:
        return f"{self.prefix}:crashes:{job_id}"

    def reap(self, job_id: str) -> str:
        return f"{self.prefix}:reap:{job_id}"

    def slot_sweep(self) -> str:
        return f"{self.prefix}:sweep:slots"

    def orphan(self, job_id: str) -> str:
        return f"{self.prefix}:orphan:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"
