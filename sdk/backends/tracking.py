"""The client's side of experiment tracking: which environment variables each tracker needs on the node.

Values never go in the spec: a tracker names its variables (`uri_env`, `key_env`), the client checks that
they are set here and forwards them like secrets. The node's side is launch/tracking.py.
"""

from __future__ import annotations

import os

from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec

# Read by the MLflow and W&B clients when set; forwarded along with the named variables.
OPTIONAL = {
    "mlflow": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS"),
    "wandb": ("WANDB_BASE_URL", "WANDB_ENTITY"),
    "tensorboard": (),
}


def required_env(spec: FineTuneSpec) -> list[tuple[str, str]]:
    """(field, variable) pairs that must be set on the submitting machine."""
    out = []
    for index, tracker in enumerate(spec.tracking):
        if tracker.name == "mlflow":
            out.append((f"tracking[{index}].uri_env", tracker.uri_env))
        elif tracker.name == "wandb" and tracker.mode == "online":
            out.append((f"tracking[{index}].key_env", tracker.key_env))
    return out


def check_env(spec: FineTuneSpec) -> None:
    missing = [(field, name) for field, name in required_env(spec) if not os.environ.get(name)]
    if missing:
        field, name = missing[0]
        raise SpecError(f"{field}: {name} is not set in this environment; the node's tracker reads it "
                        "(set it here, it is forwarded as a secret)")


def forwarded_env(spec: FineTuneSpec) -> list[str]:
    """Variable names a remote node needs for its trackers, where set here."""
    names = [name for _, name in required_env(spec)]
    for tracker in spec.tracking:
        names += OPTIONAL[tracker.name]
    return [n for n in dict.fromkeys(names) if n in os.environ]
