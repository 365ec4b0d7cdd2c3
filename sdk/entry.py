"""The `finetune` console script. `finetune --help` is answered from the text the CLI rendered the last
time (cached per CLI source files, version and terminal width), so it does not wait for typer's import
(~45 ms); every other command goes straight to `sdk.cli`."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _help_cache() -> Path | None:
    try:
        stats = [path.stat() for path in sorted((Path(__file__).parent / "cli").glob("*.py"))]
        width = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else 0
    except OSError:
        return None
    from sdk import __version__

    home = Path(os.environ.get("FINETUNE_HOME") or Path.home() / ".finetune").expanduser()
    return home / "cache" / f"help-{__version__}-{max(s.st_mtime_ns for s in stats)}-{sum(s.st_size for s in stats)}-{width}.txt"


def main() -> None:
    if sys.argv[1:] != ["--help"]:
        from sdk.cli import main as cli_main

        cli_main()
        return
    cache = _help_cache()
    if cache is not None and cache.is_file():
        sys.stdout.write(cache.read_text(encoding="utf-8"))
        return
    import contextlib
    import io

    from sdk.cli import main as cli_main

    text = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(text):
            cli_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    sys.stdout.write(text.getvalue())
    if code == 0 and cache is not None and text.getvalue():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(text.getvalue(), encoding="utf-8")
            os.replace(partial, cache)
        except OSError:
            pass  # a read-only home only costs the fast path
    sys.exit(code)
