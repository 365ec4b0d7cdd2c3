"""Credentials forwarded to a cloud node by value die with their session: warn before launch when they expire
before the run is planned to end (the adapter commit would fail after hours of training)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import datetime

MARGIN = 1.25
UNKNOWN_LENGTH_H = 12.0  # a run of unknown length: a session that ends sooner is worth a word (AWS's longest is 12 h)  # the planner's estimate is a median; a run that takes a quarter longer must still commit


def aws_expiry(environ: Mapping[str, str]) -> float | None:
    """When the AWS session in the environment expires (epoch s): AWS_CREDENTIAL_EXPIRATION, the variable botocore
    reads and `aws configure export-credentials`, aws-vault and SSO helpers set. None when unknown."""
    text = environ.get("AWS_CREDENTIAL_EXPIRATION", "").strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def session_warning(*, hours: float | None, forwards_aws: bool, environ: Mapping[str, str] | None = None,
                    now: float | None = None) -> str | None:
    """One line when the forwarded AWS session token will not outlive the run, else None."""
    env = os.environ if environ is None else environ
    if not forwards_aws or not (env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN")):
        return None  # long-lived keys, or none forwarded (the node's instance role)
    now = time.time() if now is None else now
    expires = aws_expiry(env)
    way_out = ("renew with a longer session (`aws sts get-session-token --duration-seconds 43200`, or your SSO "
               "role's maximum), or give the node an instance role instead of forwarded keys")
    if expires is None:  # unknown: botocore cannot tell either; nothing to compare
        return None
    left_h = (expires - now) / 3600
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(expires))
    if left_h <= 0:
        return f"AWS_SESSION_TOKEN expired at {when}: the node could not write to the store; {way_out}"
    if hours is None and left_h < UNKNOWN_LENGTH_H:
        return (f"AWS_SESSION_TOKEN expires at {when} (in {left_h * 60:.0f} min) and the run's length is unknown (epochs "
                f"over data not read yet): if it runs longer, the adapter commit fails after training; {way_out}")
    if hours is not None and left_h < hours * MARGIN:
        return (f"AWS_SESSION_TOKEN expires at {when} (in {left_h * 60:.0f} min), before the planned end of the run "
                f"(~{hours:.1f} h, {MARGIN:g}x margin): the adapter commit would fail after training; {way_out}")
    return None
