"""--format hub: the run's adapter (or, with --merged, the adapter merged into its 16-bit base) and a model card,
uploaded to a Hugging Face Hub repo by huggingface_hub's own HfApi (create_repo, then one upload_folder commit).

What goes up is assembled in the work folder (`upload/`); the run folder's exports/hub/ keeps only the card
(README.md) and hub.json (the repo, each uploaded file's size and sha256, the commit), so the record of an upload
does not copy its weights. A dry run reads no token and sends nothing: the report lists the files and the card.

The token is read from the one environment variable the user named (--token-env) and from nowhere else (not the
huggingface_hub login cache), and it never appears in a message: a refusal of the Hub is one line naming the
variable, the status and what to do."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from launch.exports import ExportContext
from sdk.core.errors import FinetuneError

UPLOAD = "upload"
CARD = "README.md"  # the Hub shows a repo's README.md as its model card
RECORD = "hub.json"
CHAT_TEMPLATE = "chat_template.jinja"  # transformers' tokenizer reads a repo's template from this file
# This product's own markers (a verified fetch, a merge's report): they describe the local copy, not the model.
LEFT_OUT = frozenset({"MANIFEST.json", ".finetune-fetched", "merge_report.json"})


class HubError(FinetuneError):
    """The Hub refused the upload or could not be reached (one line: the variable, the status, what to do)."""


def hub_api(token: str) -> Any:
    """The client that talks to the Hub; tests replace this factory with a recording fake."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def build(ctx: ExportContext) -> dict[str, Any]:
    """Assemble, then upload (or with dry_run only list); returns hub.json's record (repo, files, commit)."""
    options = ctx.options
    token = None if options.dry_run else hub_token(options.token_env)  # before a merge that may take minutes
    upload = assemble(ctx)
    record: dict[str, Any] = {"repo": options.repo, "private": options.private, "merged": options.merged,
                              "files": listing(upload)}
    card = (upload / CARD).read_text(encoding="utf-8")
    shutil.copyfile(upload / CARD, ctx.out / CARD)
    if options.dry_run:
        ctx.report["hub"] = {**record, "card": card}
        ctx.report["dry_run_listing"] = listing_text(record, card)
        ctx.say(f"dry run: {len(record['files'])} files ({size_text(total(record))}) would go to {options.repo}; "
                "nothing uploaded")
    else:
        record.update(push(ctx, upload, token))
        ctx.report["hub"] = record
        ctx.report["uploaded"] = record["commit_url"]
        ctx.say(f"uploaded: {record['commit_url']}")
    (ctx.out / RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def hub_token(name: str) -> str:
    """The token from the named variable; the client refused a missing one already, but the node may run elsewhere
    (a SkyPilot job) with another environment."""
    token = os.environ.get(name)
    if not token:
        raise HubError(f"--token-env: {name} is not set in this environment (it holds the Hub token; --dry-run "
                       "lists what would be uploaded without one)")
    return token


def assemble(ctx: ExportContext) -> Path:
    """upload/: the verified adapter (or the merged model), the chat template tool rows trained with, the card."""
    from launch.exports.model_card import model_card
    from sdk.store.runfolder import CHAT_TEMPLATE as RUN_TEMPLATE

    upload = ctx.work / UPLOAD
    upload.mkdir(parents=True)
    source = ctx.merged_folder() if ctx.options.merged else ctx.run.fetch_adapter(ctx.work / "adapter")
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if path.is_file() and rel not in LEFT_OUT:
            (upload / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), upload / rel)  # moved, not copied: a merged model can be many gigabytes
    portable_adapter_config(upload, ctx.spec)
    template = ctx.run.read_text(RUN_TEMPLATE)
    if template is not None:  # what generate and serve render tool calls with; the saved tokenizer may not have it
        (upload / CHAT_TEMPLATE).write_text(template, encoding="utf-8")
    (upload / CARD).write_text(model_card(ctx), encoding="utf-8")  # replaces the card peft writes by default
    return upload


def portable_adapter_config(upload: Path, spec: Any) -> None:
    """peft wrote the node's local path to the base (a cache folder) into adapter_config.json: on the Hub it names
    the base's Hub id, which AutoPeftModelForCausalLM loads, or nothing when the base is not on the Hub."""
    from launch.exports.model_card import hub_model

    path = upload / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if "base_model_name_or_path" in config:
        config["base_model_name_or_path"] = hub_model(spec)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def listing(folder: Path) -> list[dict[str, Any]]:
    from sdk.store.manifest import sha256_file

    return [{"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()]


def total(record: dict[str, Any]) -> int:
    return sum(f["size"] for f in record["files"])


def size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def listing_text(record: dict[str, Any], card: str) -> str:
    visibility = "private" if record["private"] else "public"
    what = "the merged model" if record["merged"] else "the adapter"
    lines = [f"{len(record['files'])} files ({size_text(total(record))}, {what}) would go to {record['repo']} "
             f"({visibility}); nothing uploaded:"]
    width = max(len(f["path"]) for f in record["files"])
    lines += [f"  {f['path']:<{width}}  {size_text(f['size']):>10}  sha256 {f['sha256'][:16]}" for f in record["files"]]
    return "\n".join([*lines, "", f"{CARD} (the model card):", card.rstrip()])


def push(ctx: ExportContext, folder: Path, token: str) -> dict[str, Any]:
    """create_repo (exist_ok) and one upload_folder commit; the library's errors become one HubError line."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, XetError

    options = ctx.options
    api = hub_api(token)
    ctx.say(f"uploading {sum(1 for p in folder.rglob('*') if p.is_file())} files to {options.repo}")
    try:
        url = api.create_repo(options.repo, private=options.private, exist_ok=True, repo_type="model")
        if options.private:
            require_private(api, options.repo)
        require_empty(api, options.repo, force=ctx.force)
        info = api.upload_folder(repo_id=options.repo, folder_path=folder, repo_type="model",
                                 commit_message=f"finetune export of run {ctx.run.run_id}")
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx.HTTPError, XetError) as exc:
        line = refusal(exc, options, getattr(api, "endpoint", None))
        raise HubError(line.replace(token, "***")) from None  # a server that echoed the token does not get it shown
    return {"repo_url": str(url), "commit_url": info.commit_url, "revision": info.oid}


def require_empty(api: Any, repo: str, *, force: bool) -> None:
    """An upload replaces the repo's files of the same names: a repo that already holds a model is replaced only
    with --force, as an export in the run folder is."""
    held = [name for name in api.list_repo_files(repo, repo_type="model") if name != ".gitattributes"]
    if held and not force:
        raise HubError(f"--repo: {repo} already holds {len(held)} files ({', '.join(held[:3])}"
                       f"{', …' if len(held) > 3 else ''}); pass --force to upload over them. Nothing uploaded")


def require_private(api: Any, repo: str) -> None:
    """create_repo(exist_ok=True) leaves an existing repo's visibility as it is: --private must not upload into a
    public one."""
    if not getattr(api.repo_info(repo, repo_type="model"), "private", False):
        raise HubError(f"--private: {repo} already exists on the Hub and is public (create_repo does not change "
                       "that); make it private on the Hub or drop --private. Nothing uploaded")


def refusal(exc: Exception, options: Any, endpoint: str | None) -> str:
    """One line for what the Hub (or the way to it) said."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, XetError

    var, repo, hub = f"${options.token_env}", options.repo, endpoint or "the Hub"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        said = first_line(exc.server_message)
        said = f": {said}" if said else ""
        if status == 401:
            return (f"the token in {var} was refused by the Hub (401{said}); check it (huggingface.co/settings/"
                    "tokens). Nothing uploaded")
        if status == 403:
            return (f"the token in {var} may not write to {repo} (403{said}): the repo or its namespace belongs to "
                    "someone else, or the token is read-only. Nothing uploaded")
        if status == 429:
            return f"the Hub is rate-limiting this token (429{said}); try again later. Nothing uploaded"
        if status is not None and status >= 500:
            return f"the Hub failed to take the upload to {repo} ({status}{said}); try again. Nothing uploaded"
        return f"the Hub refused the upload to {repo} ({status}{said}). Nothing uploaded"
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set in this environment, so the Hub cannot be reached; unset it to upload"
    reason = first_line(str(exc)) or type(exc).__name__
    if isinstance(exc, XetError):  # the Hub's storage backend failed mid-upload: no commit was made
        return f"the upload to {repo} failed ({reason}); nothing was committed to the repo"
    return f"could not reach {hub} to upload to {repo} ({reason}); nothing uploaded"


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].strip()[:200] if lines else ""
