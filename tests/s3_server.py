"""A real S3 server on 127.0.0.1 for the object-storage tests: moto's `ThreadedMotoServer`, with request signing
checked (a wrong secret is refused as by AWS), a bucket, and a user whose keys `bench` gets the way a user gives
them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` in the environment)."""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from conftest import bench_env, distinct_port, require

BUCKET = "bench-results"
REGION = "us-east-1"


@dataclass
class S3:
    port: int
    key: str
    secret: str
    iam: object  # a boto3 IAM client allowed everything: makes and revokes users' keys

    def new_user(self, name: str) -> tuple[str, str]:
        """A user allowed every S3 action; its access key and secret."""
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        self.iam.create_user(UserName=name)
        self.iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """A `bench` process's environment with this server's credentials and endpoint, as a user sets them."""
        env = bench_env(drop=("AWS_PROFILE", "AWS_SESSION_TOKEN"))
        env.update(
            AWS_ACCESS_KEY_ID=self.key,
            AWS_SECRET_ACCESS_KEY=self.secret,
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
        )
        env.update(overrides)
        return env

    def fs(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=self.key, secret_key=self.secret, endpoint_override=f"127.0.0.1:{self.port}", scheme="http"
        )

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Every object under ``BUCKET/prefix``: key -> size."""
        infos = self.fs().get_file_info(
            pafs.FileSelector(f"{BUCKET}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True)
        )
        return {i.path: i.size for i in infos if i.type == pafs.FileType.File}

    def read(self, key: str) -> pd.DataFrame:
        with self.fs().open_input_file(f"{BUCKET}/{key}") as handle:
            return pq.read_table(handle).to_pandas()


@contextlib.contextmanager
def s3_server() -> Iterator[S3]:
    """The server, its bucket and a user, for as long as the block runs."""
    try:
        import boto3
        import moto.settings
        from moto.server import ThreadedMotoServer
    except ImportError:
        boto3 = None
    require(boto3 is not None, "moto[server] and boto3 are not installed (pip install -e '.[dev]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = distinct_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # One moto per process keeps its state across servers: start from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    admin = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "aws_access_key_id": "admin",
        "aws_secret_access_key": "admin",
        "region_name": REGION,
    }
    boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="admin")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(policy))
    root = iam.create_access_key(UserName="admin")["AccessKey"]
    admin.update(aws_access_key_id=root["AccessKeyId"], aws_secret_access_key=root["SecretAccessKey"])
    server_s3 = S3(port, "", "", boto3.client("iam", **admin))
    checked = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is signed and checked
    try:
        server_s3.key, server_s3.secret = server_s3.new_user("bench")
        yield server_s3
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = checked
        server.stop()
