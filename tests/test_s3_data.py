"""An s3:// dataset is downloaded once per node, not once per rank: counted on a real S3 server's request log."""

from __future__ import annotations

import time

from helpers import run_node, start_moto

from sdk.core.recipes import load_recipe


def test_two_ranks_make_one_get_of_the_dataset(tmp_path):
    log = tmp_path / "moto.log"
    with start_moto(log) as endpoint:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="data")
        rows = "".join(f'{{"instruction": "Classify this news text.", "input": "headline {i} about markets", "output": "Business"}}\n'
                       for i in range(64))
        s3.put_object(Bucket="data", Key="news/train.jsonl", Body=rows.encode())
        spec = load_recipe("tiny", ["data.source=s3://data/news/train.jsonl", "data.eval_source=null", "data.eval_split=0.1",
                                    "train.max_steps=2", "distributed.nproc_per_node=2", "eval.before=false", "eval.after=false",
                                    f"output={tmp_path / 'runs'}"])
        result, folder = run_node(spec, tmp_path / "runs", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert folder.adapter_manifest() is not None and folder.read_json("summary.json")["world_size"] == 2
        time.sleep(0.5)  # the server flushes its request log
    gets = [line for line in log.read_text(errors="replace").splitlines() if '"GET /data/news/train.jsonl' in line]
    assert len(gets) == 1, gets
