"""What a serving node is asked to do (the plan), shared by the client that writes it and the node
(launch/tools/serve.py) that reads it, with the names both sides agree on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
ENGINE_BASE = "finetune-engine-base"  # the engine's own name for the bare base; clients use the served names
NODE_TLS = {"certfile": "~/.finetune/tls/cert.pem", "keyfile": "~/.finetune/tls/key.pem"}  # where a node finds them
SERVE_KEY_ENV = "FINETUNE_SERVE_API_KEY"  # how the key reaches the serving node (launch/tools/serve.py hands it to vLLM)


class ServedAdapter(BaseModel):
    name: str
    run_id: str
    run_uri: str
    rank: int


class ServePlan(BaseModel):
    """What the serving node does; written as JSON for it (launch/tools/serve.py)."""

    server_id: str
    base_name: str
    base_spec: dict[str, Any]  # the first run's spec: how to load the base model (the same as in training)
    adapters: list[ServedAdapter]
    merged: ServedAdapter | None = None  # --merge: one run served as a merged model, no LoRA
    max_lora_rank: int = 8
    max_loras: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "float32"
    max_model_len: int | None = 2048  # None: the model's own context length
    prompting: dict[str, dict[str, str | None]] = {}  # served name -> its run's summary template and instruction
    idle_stop_minutes: float | None = None  # the engine stops after this long without a request (launch/tools/idle_stop.py)
    tls: bool = False  # the engine serves HTTPS with the certificate mounted at NODE_TLS (a single-node cloud server)
    # adapters load and unload while the engine runs (POST /v1/load_lora_adapter): `finetune api`'s engines
    runtime_lora: bool = False

    @property
    def names(self) -> list[str]:
        return ([self.merged.name] if self.merged else []) + ([self.base_name] if self.adapters else []) + \
            [a.name for a in self.adapters]
