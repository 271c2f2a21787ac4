"""A real S3 endpoint for tests: moto's standalone server, over HTTP on 127.0.0.1.

moto is a stand-in for S3 (the local-disk tests stay the main ones); it speaks the S3 HTTP API,
so s3fs, botocore and Lake's code run exactly as against a real bucket. One server per test
session; each test gets its own bucket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3:
    """A bucket on the moto server and an s3fs file system that reaches it."""

    endpoint: str
    bucket: str
    fs: Any

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/lake"

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint}

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess needs to reach the bucket by URL alone."""
        return {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": self.endpoint}

    def keys(self, under: str = "") -> list[str]:
        """Every object key under ``lake/<under>``, relative to ``lake/``."""
        self.fs.invalidate_cache()
        prefix = f"{self.bucket}/lake/{under}".rstrip("/")
        try:
            found = self.fs.find(prefix)
        except FileNotFoundError:
            return []
        return sorted(k[len(self.bucket) + len("/lake/"):] for k in found)

    def runs(self, kind: str, table: str) -> list[str]:
        return sorted({k.split("/")[2] for k in self.keys(f"{kind}/{table}")})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start ``python -m moto.server`` on a free port and wait until it answers."""
    # No skip when they are missing: the test extra installs s3fs and moto[server].
    import moto.server  # noqa: F401
    import s3fs  # noqa: F401

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    os.environ.update(CREDENTIALS)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint: str) -> S3:
    """A fresh bucket for one test."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                           secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return S3(s3_endpoint, bucket, fs)
