"""`python -m launch.tools.serve --plan PLAN.json --engine-python PY`: the serving node.

Fetches each run's adapter from the store (manifest-verified), writes the zero adapter that serves the base
(see sdk.serving), prepares the base model as a plain folder (a GGUF is dequantized once, as for training),
or merges the run for `--merge`; then replaces itself with vLLM's OpenAI-compatible server, so the process
the client started is the engine (one process group to stop). The same code runs locally and on a
SkyPilot node.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path


def zero_adapter(source: Path, target: Path) -> Path:
    """A copy of an adapter with every weight zero: B = 0 adds nothing, so its output is the base model's."""
    import shutil

    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "adapter_config.json", target / "adapter_config.json")
    weights = load_file(str(source / "adapter_model.safetensors"))
    save_file({k: v.new_zeros(v.shape) for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
    return target


def not_chat_models(plan) -> dict[str, str]:
    """The served runs trained on prompts that are not chat turns (data.template instruction or plain), by name:
    the engine's middleware refuses their chat requests with the reason (launch/tools/engine_auth.py). The bare
    base is not one: it was never trained."""
    runs = [plan.merged.name] if plan.merged else [a.name for a in plan.adapters]
    return {name: how["template"] for name in runs
            if (how := plan.prompting.get(name) or {}).get("template") in ("instruction", "plain")}


def trained_chat_template(plan, work: Path) -> Path | None:
    """The chat template a served tool-calling run trained with (its run folder's chat_template.jinja), written
    where the engine reads it; None when every served run uses the base's own."""
    from sdk.store.runfolder import CHAT_TEMPLATE, RunFolder

    served = [plan.merged] if plan.merged else plan.adapters
    for adapter in served:
        if (plan.prompting.get(adapter.name) or {}).get("tool_template"):
            text = RunFolder.open(adapter.run_uri).read_text(CHAT_TEMPLATE)
            if text is None:
                raise ValueError(f"{adapter.run_id}: trained on tools but its run folder has no {CHAT_TEMPLATE}")
            path = work / CHAT_TEMPLATE
            path.write_text(text)
            print(f"[finetune] {adapter.name}: tool calls in the chat template it trained with ({CHAT_TEMPLATE})", flush=True)
            return path
    return None


def tool_flags(plan, chat_template: Path | None) -> list[str]:
    """vLLM's tool-call parsing when a served run was trained on tools: its parser, and the chat template the run
    trained with when that is not the base's own (sdk.data.tools: the Hermes prologue). One template for the whole
    engine is safe: without tools in a request the prologue renders the base's template unchanged."""
    parsers = {how.get("tool_parser") for how in plan.prompting.values() if how.get("tool_parser")}
    if not parsers:
        return []
    if len(parsers) > 1:
        raise ValueError(f"the served runs were trained with different tool formats ({', '.join(sorted(parsers))}); "
                         "serve them separately")
    flags = ["--enable-auto-tool-choice", "--tool-call-parser", parsers.pop()]
    return flags + (["--chat-template", str(chat_template)] if chat_template else [])


def engine_command(plan, python: str, model_dir: str, adapters: dict[str, Path], cpu: bool,
                   chat_template: Path | None = None) -> list[str]:
    from sdk.core.serveplan import ENGINE_BASE

    served = plan.merged.name if plan.merged else ENGINE_BASE
    argv = [python, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model_dir, "--served-model-name", served,
            "--host", plan.host, "--port", str(plan.port), "--dtype", plan.dtype,
            "--uvicorn-log-level", "warning", "--middleware", "finetune_engine_auth.RequireKey"]  # the key on every route
    argv += ["--max-model-len", str(plan.max_model_len)] if plan.max_model_len else []
    if plan.tls:  # the certificate the client mounted (sdk.core.serveplan.NODE_TLS)
        from sdk.core.serveplan import NODE_TLS

        argv += ["--ssl-certfile", os.path.expanduser(NODE_TLS["certfile"]), "--ssl-keyfile", os.path.expanduser(NODE_TLS["keyfile"])]
    if cpu:
        argv += ["--gpu-memory-utilization", "0.5"]  # vLLM's CPU build counts the page cache as used memory
    if adapters or plan.runtime_lora:
        argv += ["--enable-lora", "--max-lora-rank", str(plan.max_lora_rank), "--max-loras", str(plan.max_loras)]
    if adapters:  # one flag: given twice, vLLM keeps the last
        argv += ["--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    return argv + tool_flags(plan, chat_template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.serve")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--engine-python", required=True)
    parser.add_argument("--workdir", help="where adapters are fetched (default: beside the plan)")
    args = parser.parse_args(argv)

    from sdk.core.errors import FinetuneError
    from sdk.core.serveplan import SERVE_KEY_ENV, ServePlan
    from sdk.core.spec import parse_spec
    from sdk.store.grants import GRANTS_ENV, materialize

    key = os.environ.pop(SERVE_KEY_ENV, None)  # checked first: a missing key must not cost the adapter fetches
    if not key:
        print(f"error: no API key for the endpoint ({SERVE_KEY_ENV} is not set); finetune serve sets it", file=sys.stderr, flush=True)
        return 2
    try:
        plan = ServePlan.model_validate_json(Path(args.plan).read_text())
        work = Path(args.workdir or Path(args.plan).with_suffix("").with_suffix(""))
        work.mkdir(parents=True, exist_ok=True)
        spec = parse_spec(plan.base_spec)
        grants = os.environ.pop(GRANTS_ENV, None)
        if grants:  # a cloud node: the served runs' files through signed URLs, into a run folder of its own
            local = materialize(grants, work / "runs")
            plan = plan.model_copy(update={
                "adapters": [a.model_copy(update={"run_uri": local[a.run_uri]}) for a in plan.adapters],
                "merged": plan.merged.model_copy(update={"run_uri": local[plan.merged.run_uri]}) if plan.merged else None})
            print(f"[finetune] {len(local)} served run(s) downloaded through read-only grants", flush=True)
        from sdk.store.runfolder import RunFolder

        adapters: dict[str, Path] = {}
        for adapter in plan.adapters:
            adapters[adapter.name] = RunFolder.open(adapter.run_uri).fetch_adapter(work / "adapters" / adapter.name, overwrite=True)
            print(f"[finetune] {adapter.name}: adapter of {adapter.run_id} (rank {adapter.rank}) fetched and verified", flush=True)
        if adapters:
            first = next(iter(adapters.values()))
            adapters = {plan.base_name: zero_adapter(first, work / "adapters" / plan.base_name), **adapters}
        if plan.merged:
            from launch.tools.merge import merge

            out = work / "merged" / plan.merged.name
            report = merge(plan.merged.run_uri, out, dtype="auto", force=True)
            print(f"[finetune] {plan.merged.name}: merged {plan.merged.run_id} (max logit diff {report.get('max_logit_diff')})",
                  flush=True)
            model_dir = str(out)
        else:
            from launch.models import local_source

            model_dir = local_source(spec.model).path
        import torch

        cpu = not torch.cuda.is_available()
        command = engine_command(plan, args.engine_python, model_dir, adapters, cpu, trained_chat_template(plan, work))
    except (FinetuneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    env = dict(os.environ)
    env["VLLM_API_KEY"] = key  # vLLM's own check (/v1...), and launch/tools/engine_auth.py's on every other route
    env["FINETUNE_NOT_CHAT_MODELS"] = json.dumps(not_chat_models(plan))  # the middleware refuses their chat requests
    import shutil

    engine_path = work / "engine-path"
    engine_path.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("engine_auth.py"), engine_path / "finetune_engine_auth.py")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(engine_path), env.get("PYTHONPATH")]))
    if cpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    if plan.runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if plan.idle_stop_minutes:  # the middleware stamps each request; a watcher stops the engine when none came
        activity = work / "last-request"
        activity.touch()
        env["FINETUNE_ACTIVITY_FILE"] = str(activity)
        import subprocess

        subprocess.Popen([sys.executable, "-m", "launch.tools.idle_stop", "--pid", str(os.getpid()), "--activity", str(activity),
                          "--minutes", str(plan.idle_stop_minutes)], stdin=subprocess.DEVNULL)
        print(f"[finetune] idle stop: the engine stops after {plan.idle_stop_minutes:g} min without a request", flush=True)
    print(f"[finetune] starting vLLM: {shlex.join(command)}", flush=True)
    os.execve(command[0], command, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
