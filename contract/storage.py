"""Object storage shared by the gateway and the workers: a local directory or any S3-compatible store.

Keys are "/"-separated relative paths (`outputs/<job_id>.mp4`, `inputs/<job_id>.png`). Workers call
`put_file(path, key, content_type)` after encoding; the gateway stores I2V inputs with `put_bytes`
and serves outputs either as a presigned URL (S3: the client is redirected there) or as a byte
stream with Range support (local store).

Build one with `make_storage(settings.storage)`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from contract.settings import StorageSettings

_CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """Raised when the store cannot complete an operation (after the client's own retries)."""


class ObjectNotFound(StorageError):
    pass


class Storage(Protocol):
    def put_file(self, path: Path, key: str, content_type: str) -> int: ...
    def put_bytes(self, data: bytes, key: str, content_type: str) -> int: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None: ...
    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...


def _check_key(key: str) -> str:
    p = PurePosixPath(key)
    if not key or p.is_absolute() or ".." in p.parts or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStorage:
    """Files under one directory; writes go to a temp file and are renamed into place (atomic)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, path: Path, key: str, content_type: str) -> int:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
        return dest.stat().st_size

    def put_bytes(self, data: bytes, key: str, content_type: str) -> int:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
        return len(data)

    def get_bytes(self, key: str) -> bytes:
        p = self._path(key)
        if not p.is_file():
            raise ObjectNotFound(key)
        return p.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        p = self._path(key)
        if not p.is_file():
            raise ObjectNotFound(key)
        return p.stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None:
        return None  # the gateway streams local objects itself

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end] (inclusive end, None: to the last byte) in 1 MiB chunks."""
        p = self._path(key)
        if not p.is_file():
            raise ObjectNotFound(key)
        last = p.stat().st_size - 1 if end is None else end

        def chunks() -> Iterator[bytes]:
            with p.open("rb") as f:
                f.seek(start)
                remaining = last - start + 1
                while remaining > 0:
                    buf = f.read(min(_CHUNK, remaining))
                    if not buf:
                        break
                    remaining -= len(buf)
                    yield buf

        return chunks()


class S3Storage:
    """S3 (or MinIO/R2/...) through boto3: multipart uploads above a threshold, botocore retries."""

    def __init__(self, cfg: StorageSettings) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.cfg = cfg
        self.bucket = cfg.s3_bucket
        self.prefix = cfg.s3_prefix.strip("/")
        kwargs: dict[str, Any] = {
            "region_name": cfg.s3_region,
            "endpoint_url": cfg.s3_endpoint_url,
            "config": Config(
                retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                s3={"addressing_style": cfg.s3_addressing_style},
                signature_version="s3v4",
            ),
        }
        if cfg.s3_access_key_id is not None and cfg.s3_secret_access_key is not None:
            kwargs["aws_access_key_id"] = cfg.s3_access_key_id.get_secret_value()
            kwargs["aws_secret_access_key"] = cfg.s3_secret_access_key.get_secret_value()
        self.client = boto3.client("s3", **kwargs)
        mb = 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold_mb * mb,
            multipart_chunksize=max(8, cfg.multipart_threshold_mb) * mb,
            max_concurrency=4,
        )

    def _k(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _wrap(self, exc: Exception, key: str) -> StorageError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return ObjectNotFound(key)
        return StorageError(f"s3 operation on {key!r} failed: {exc}")

    def put_file(self, path: Path, key: str, content_type: str) -> int:
        k = self._k(key)
        try:
            self.client.upload_file(
                str(path), self.bucket, k,
                ExtraArgs={"ContentType": content_type}, Config=self.transfer,
            )
        except Exception as exc:  # botocore/boto3 raise several unrelated types
            raise self._wrap(exc, key) from exc
        return Path(path).stat().st_size

    def put_bytes(self, data: bytes, key: str, content_type: str) -> int:
        k = self._k(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=k, Body=data, ContentType=content_type)
        except Exception as exc:
            raise self._wrap(exc, key) from exc
        return len(data)

    def get_bytes(self, key: str) -> bytes:
        k = self._k(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=k)["Body"]
            return bytes(body.read())
        except Exception as exc:
            raise self._wrap(exc, key) from exc

    def size(self, key: str) -> int:
        k = self._k(key)
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=k)["ContentLength"])
        except Exception as exc:
            raise self._wrap(exc, key) from exc

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        k = self._k(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=k)
        except Exception as exc:
            raise self._wrap(exc, key) from exc

    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": self._k(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return str(self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=self.cfg.presign_ttl_s
        ))

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        rng = f"bytes={start}-" if end is None else f"bytes={start}-{end}"
        k = self._k(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=k, Range=rng)["Body"]
        except Exception as exc:
            raise self._wrap(exc, key) from exc
        return iter(lambda: body.read(_CHUNK), b"")

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (dev stacks, tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except Exception as exc:
                raise self._wrap(exc, self.bucket) from exc


def make_storage(cfg: StorageSettings) -> Storage:
    if cfg.backend == "s3":
        return S3Storage(cfg)
    return LocalStorage(cfg.local_dir)
