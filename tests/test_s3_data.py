"""An s3:// dataset is downloaded once per node, not once per rank: counted on a real S3 server's request log."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import free_port, run_node, wait_for_port

from sdk.recipes import load_recipe


def test_two_ranks_make_one_get_of_the_dataset(tmp_path):
    port = free_port()
    log = tmp_path / "moto.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="data")
        rows = "".join(f'{{"instruction": "Classify this news text.", "input": "headline {i} about markets", "output": "Business"}}\n'
                       for i in range(64))
        s3.put_object(Bucket="data", Key="news/train.jsonl", Body=rows.encode())
        spec = load_recipe("tiny", ["data.source=s3://data/news/train.jsonl", "data.eval_source=null", "data.eval_split=0.1", "train.max_steps=2",
                                    "distributed.nproc_per_node=2", "eval.before=false", "eval.after=false",
                                    f"output={tmp_path / 'runs'}"])
        result, folder = run_node(spec, tmp_path / "runs", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert folder.adapter_manifest() is not None
        time.sleep(0.5)  # the server flushes its request log
        gets = [line for line in log.read_text(errors="replace").splitlines() if '"GET /data/news/train.jsonl' in line]
        assert len(gets) == 1, gets
        assert "world_size" in folder.read_json("summary.json") and folder.read_json("summary.json")["world_size"] == 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        assert server.poll() is not None
