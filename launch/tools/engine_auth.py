"""An ASGI middleware the serving engine (vLLM) loads with `--middleware finetune_engine_auth.RequireKey`: the
endpoint's key on every route but the health probes.

vLLM's own `--api-key` check guards only paths under /v1, /v2, /inference and /cohere; its SageMaker route
`/invocations` (always registered) and /tokenize, /pooling and /score answer without a key. This file runs
inside the engine's own environment (launch/tools/serve.py copies it beside the plan and puts it on PYTHONPATH),
so it imports the standard library only."""

from __future__ import annotations

import hashlib
import hmac
import os

OPEN = ("/health", "/ping")  # load-balancer probes; they tell nothing about the models
NOT_USE = ("/v1/models", "/metrics", "/version")  # listings (`finetune servers` asks /v1/models): they keep nothing up
ACTIVITY_ENV = "FINETUNE_ACTIVITY_FILE"  # touched on every keyed request: launch/tools/idle_stop.py reads its age


class RequireKey:
    def __init__(self, app):
        self.app = app
        self.key = hashlib.sha256(os.environ["VLLM_API_KEY"].encode()).digest()
        self.activity = os.environ.get(ACTIVITY_ENV)
        self.touched = 0.0

    def _touch(self) -> None:
        """A request that is not a probe: the server is in use (one write per second at most)."""
        import time

        now = time.time()
        if self.activity and now - self.touched > 1.0:
            self.touched = now
            try:
                os.utime(self.activity)
            except OSError:
                pass  # the watcher treats a missing file as no activity; serving must not fail on it

    def _allowed(self, scope) -> bool:
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            return True
        if scope["path"].removeprefix(scope.get("root_path", "")) in OPEN:
            return True
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self.key)

    async def __call__(self, scope, receive, send):
        if self._allowed(scope):
            path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
            if scope["type"] == "http" and scope.get("method") != "OPTIONS" and path not in OPEN + NOT_USE:
                self._touch()  # a keyed request (anything unkeyed was refused above): the server is in use
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b'{"error": "Unauthorized"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
