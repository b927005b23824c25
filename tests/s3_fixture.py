"""Fills a moto S3 server the way Shimmie's ext/s3 fills its bucket (tests/s3_origin.rs).

Usage: s3_fixture.py ENDPOINT BUCKET public|private MANIFEST.json CRED_DIR

MANIFEST is a list of {"key", "file", "content_type", "disposition"}. Objects go to
KEY with that Content-Type and Content-Disposition, public-read for a public bucket.
For a private bucket the server must run with INITIAL_NO_AUTH_ACTION_COUNT=3: the
first three calls (unauthenticated) create an IAM user, its key and an allow-all
policy; everything after is signed with that key, which is written to
CRED_DIR/access_key_id and CRED_DIR/secret_access_key (when they are there already,
from an earlier run against the same server, they are used instead). Prints "ready"
when done.
"""

import json
import os
import sys

import boto3


def main():
    endpoint, bucket, mode, manifest, cred_dir = sys.argv[1:6]
    kw = dict(endpoint_url=endpoint, region_name="us-east-1")
    key_id, secret = "AKIAIOSFODNN7EXAMPLE", "test-secret"
    id_file = os.path.join(cred_dir, "access_key_id")
    if mode == "private" and os.path.exists(id_file):
        # A second bucket on the same server: the keys were issued already.
        with open(id_file) as f:
            key_id = f.read().strip()
        with open(os.path.join(cred_dir, "secret_access_key")) as f:
            secret = f.read().strip()
    elif mode == "private":
        iam = boto3.client(
            "iam", aws_access_key_id=key_id, aws_secret_access_key=secret, **kw
        )
        iam.create_user(UserName="shimmer")
        k = iam.create_access_key(UserName="shimmer")["AccessKey"]
        iam.put_user_policy(
            UserName="shimmer",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key_id, secret = k["AccessKeyId"], k["SecretAccessKey"]
        with open(os.path.join(cred_dir, "access_key_id"), "w") as f:
            f.write(key_id + "\n")
        with open(os.path.join(cred_dir, "secret_access_key"), "w") as f:
            f.write(secret + "\n")
    s3 = boto3.client("s3", aws_access_key_id=key_id, aws_secret_access_key=secret, **kw)
    s3.create_bucket(Bucket=bucket)
    with open(manifest) as f:
        objects = json.load(f)
    for o in objects:
        with open(o["file"], "rb") as body:
            extra = {"ACL": "public-read"} if mode == "public" else {}
            s3.put_object(
                Bucket=bucket,
                Key=o["key"],
                Body=body.read(),
                ContentType=o["content_type"],
                ContentDisposition=o["disposition"],
                **extra,
            )
    print("ready", flush=True)


if __name__ == "__main__":
    main()
