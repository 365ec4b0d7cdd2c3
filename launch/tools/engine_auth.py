"""An ASGI middleware the serving engine (vLLM) loads with `--middleware finetune_engine_auth.RequireKey`: the
endpoint's key on every route but the health probes.

vLLM's own `--api-key` check guards only paths under /v1, /v2, /inference and /cohere; its SageMaker route
`/invocations` (always registered) and /tokenize, /pooling and /score answer without a key. This file runs
inside the engine's own environment (launch/tools/serve.py copies it beside the plan and puts it on PYTHONPATH),
so it imports the standard library only.

It also answers the chat endpoint for a model trained on prompts that are not chat turns (data.template
instruction or plain; CHAT_REFUSED_ENV names them): vLLM would wrap the messages in the base's chat template,
a format the adapter never saw, and answer out of distribution without a word. Such a request gets a 400 that
says which endpoint and prompt the model was trained for."""

from __future__ import annotations

import hashlib
import hmac
import json
import os

OPEN = ("/health", "/ping")  # load-balancer probes; they tell nothing about the models
NOT_USE = ("/v1/models", "/metrics", "/version")  # listings (`finetune servers` asks /v1/models): they keep nothing up
CHAT_REFUSED_ENV = "FINETUNE_NOT_CHAT_MODELS"  # JSON {served name: the template its run trained in}
ACTIVITY_ENV = "FINETUNE_ACTIVITY_FILE"  # touched on every keyed request: launch/tools/idle_stop.py reads its age


class RequireKey:
    def __init__(self, app):
        self.app = app
        self.key = hashlib.sha256(os.environ["VLLM_API_KEY"].encode()).digest()
        self.activity = os.environ.get(ACTIVITY_ENV)
        self.touched = 0.0
        self.not_chat = json.loads(os.environ.get(CHAT_REFUSED_ENV) or "{}")

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
            if self.not_chat and path == "/v1/chat/completions" and scope.get("method") == "POST":
                return await self._chat(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b'{"error": "Unauthorized"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _chat(self, scope, receive, send):
        """A chat request for a model trained on non-chat prompts is refused with the reason; any other goes on
        with its body replayed as it came."""
        chunks, message = [], {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None
        template = self.not_chat.get(model) if isinstance(model, str) else None
        if template is None:
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        written = "'### Instruction / ### Response' prompts" if template == "instruction" else "prompts as plain text"
        reason = (f"model {model!r} was trained on {written} (its run's data.template: {template}), not on chat turns: "
                  f"a chat request would reach it in a format it never saw. Send /v1/completions the prompt written "
                  f"that way (Server.ask and finetune generate do), or train with data.template: chat or auto")
        reply = json.dumps({"error": {"message": reason, "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_trained_for_chat"}}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})
