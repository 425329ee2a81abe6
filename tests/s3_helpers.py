"""A local S3 server (moto) on 127.0.0.1 for the object-storage tests: one per test session."""

import os
from pathlib import Path

BUCKET = "tpn-shards"


def start_s3():
    """Start the server, point the standard AWS variables at it; (filesystem, stop function)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(BUCKET, exist_ok=True)

    def stop() -> None:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        type(fs).clear_instance_cache()  # cached filesystems know the stopped endpoint

    return fs, stop


def upload(fs, local: Path, prefix: str) -> str:
    """Copy a shard folder's files under BUCKET/prefix; its s3:// URL."""
    for path in sorted(local.iterdir()):
        if path.is_file():
            fs.put_file(str(path), f"{BUCKET}/{prefix}/{path.name}")
    return f"s3://{BUCKET}/{prefix}"
