"""S3 (and S3-compatible servers) as a store, through boto3, with bounded retries that name the URI."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sdk.core.errors import StoreError
from sdk.store.base import T, _safe_key

# ---------------------------------------------------------------------------------------------- s3


def _retry(uri: str, action: str, fn: Callable[[], T], *, attempts: int | None = None, base_delay: float = 0.5) -> T:
    """Run fn, retrying connection-level failures with exponential backoff; name the URI on failure."""
    attempts = attempts or int(os.environ.get("FINETUNE_STORE_ATTEMPTS", "5"))
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    transient = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectionError)
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (NoCredentialsError, PartialCredentialsError):
            raise StoreError(f"{uri}: cannot {action}: no AWS credentials found (env, profile or instance role)") from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, message = err.get("Code", "?"), err.get("Message", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 and attempt < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            hint = ""
            if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
                hint = " (check the AWS credentials or profile for this endpoint)"
            raise StoreError(f"{uri}: cannot {action}: {code} {message}".rstrip() + hint) from None
        except (S3UploadFailedError, *transient) as exc:
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            raise StoreError(f"{uri}: cannot {action} after {attempts} attempts: {exc}") from None
    raise AssertionError("unreachable")


class S3Store:
    """s3://bucket/prefix through boto3; honours AWS_ENDPOINT_URL, profiles, region and the credential chain."""

    def __init__(self, uri: str, *, client: Any = None):
        rest = uri[len("s3://"):].strip("/")
        self.bucket, _, self.prefix = rest.partition("/")
        if not self.bucket:
            raise StoreError(f"{uri}: needs a bucket: s3://bucket/prefix")
        self.uri = f"s3://{rest}"
        self._client = client
        self._region: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                # Path-style works with every S3-compatible server (moto, Swift, MinIO) and with AWS.
                s3={"addressing_style": "path"} if os.environ.get("AWS_ENDPOINT_URL") else {},
            )
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _key(self, key: str) -> str:
        key = _safe_key(key) if key else ""
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @staticmethod
    def _transfer_config() -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=8)

    def _where(self, key: str) -> str:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or (self._client.meta.endpoint_url if self._client else None)
        return f"{self.url(key)} (endpoint {endpoint})" if endpoint else self.url(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        _retry(self._where(key), "write", lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        try:
            return _retry(self._where(key), "read", get)
        except StoreError as exc:
            if "NoSuchKey" in str(exc):
                raise StoreError(f"{self.url(key)}: no such object") from None
            raise

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines as bytes, streamed: a large file is read without holding it whole (the reader
        decodes them, so that a line that is not UTF-8 is reported where it is)."""
        def get() -> Any:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

        try:
            body = _retry(self._where(key), "read", get)
        except StoreError as exc:
            if "NoSuchKey" in str(exc):
                raise StoreError(f"{self.url(key)}: no such object") from None
            raise
        yield from body.iter_lines(chunk_size=1 << 20)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return _retry(self._where(key), "check", head)

    def head(self, key: str) -> dict[str, Any]:
        """The object's metadata (ETag, VersionId when the bucket keeps versions, ContentLength), without its bytes."""
        return _retry(self._where(key), "read", lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))

    def presign_get(self, key: str, seconds: int) -> str:
        """A GET URL for one object, SigV4 in the bucket's own region (SigV2 on the global endpoint is refused by
        SigV4-only regions and new buckets); AWS_ENDPOINT_URL (an S3-compatible server) is honoured."""
        import boto3
        from botocore.config import Config

        custom = bool(os.environ.get("AWS_ENDPOINT_URL"))
        style = "path" if custom or "." in self.bucket else "virtual"  # a dotted name breaks the TLS wildcard
        signer = boto3.session.Session().client("s3", region_name=self.region(), config=Config(
            signature_version="s3v4", s3={"addressing_style": style}))
        return signer.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                             ExpiresIn=seconds)

    def region(self) -> str:
        """The bucket's region: asked of S3 once (GetBucketLocation), else AWS_REGION, the client's, us-east-1."""
        if self._region is None:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                where = self.client.get_bucket_location(Bucket=self.bucket).get("LocationConstraint")
                found = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(where, where)
            except (BotoCoreError, ClientError):
                found = None
            self._region = found or os.environ.get("AWS_REGION") or self.client.meta.region_name or "us-east-1"
        return self._region

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        full = f"{full}/" if full else ""
        root = f"{self.prefix}/" if self.prefix else ""

        def collect() -> list[str]:
            keys = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][len(root):] for obj in page.get("Contents", []))
            return sorted(keys)

        return _retry(self._where(prefix), "list", collect)

    def upload_file(self, path: Path, key: str) -> None:
        _retry(
            self._where(key),
            "upload",
            lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer_config()),
        )

    def download_file(self, key: str, path: Path) -> None:
        _retry(
            self._where(key),
            "download",
            lambda: self.client.download_file(self.bucket, self._key(key), str(path), Config=self._transfer_config()),
        )

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            _retry(self._where(prefix), "delete", lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": b}))
