"""Object stores: `s3://bucket/prefix` (boto3) or a local directory, behind one small interface.

The store is the source of truth for runs. A directory artifact (adapter, checkpoint) is committed
file by file and becomes visible only when its MANIFEST.json (sha256 + size of every file) is
written, last. Fetch verifies every checksum, refuses keys that would escape the destination and
builds the destination in a temporary sibling that is renamed into place only when complete.

Modules: base (the Store protocol, open_store, key rules), local, s3, manifest (commit and verified fetch),
atomic (all-or-nothing folders), runfolder (a run's files), grants (read-only URLs for serving nodes).
"""

from __future__ import annotations

from sdk.store.base import MANIFEST, Store, contained, open_store, split_run_uri  # noqa: F401
from sdk.store.local import LocalStore  # noqa: F401
from sdk.store.manifest import (  # noqa: F401
    FETCHED,
    REPLACEABLE_MARKERS,
    check_replaceable,
    commit_dir,
    fetch_dir,
    read_manifest,
    sha256_file,
)
from sdk.store.s3 import S3Store  # noqa: F401
