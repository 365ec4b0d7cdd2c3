"""The node's setup on the images users get, reproduced here: a package index on 127.0.0.1 laid out like
PyTorch's (a combined torch page and one simple page per CUDA build, holding stand-in wheels named like the
real ones) and a stand-in `nvidia-smi`. The setup's own generated torch stage runs for real with bash and
installs from the build the driver runs, or stops with one line."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from sdk.backends.skypilot import _indent, installer_stage, torch_stage, venv_stage
from sdk.backends.torch_index import choose

PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
# CUDA builds PyTorch publishes per release (pytorch.org/get-started/previous-versions; 2.12 dropped cu128
# and every build below 12.6: pytorch/FBGEMM#5976, pytorch/pytorch#178665), plus the CPU build.
PUBLISHED = {"2.11.0": ["cu126", "cu128", "cu130", "cpu"], "2.13.0": ["cu126", "cu130", "cpu"]}
# Driver floors (CUDA minor-version compatibility): 12.x >= 525.60.13, 13.x >= 580.65.06; nothing older than 12.6 exists.
EXPECTED = {
    ("470.256.02", "2.11.0"): None, ("470.256.02", "2.13.0"): None,  # CUDA 11 drivers: no build of either release
    ("535.216.01", "2.11.0"): "cu128", ("535.216.01", "2.13.0"): "cu126",  # SkyPilot's AWS image (skypilot#9406)
    ("550.127.05", "2.11.0"): "cu128", ("550.127.05", "2.13.0"): "cu126",
    ("570.133.20", "2.11.0"): "cu128", ("570.133.20", "2.13.0"): "cu126",  # 2.13 has no cu128: the old table's dead end
    ("575.57.08", "2.11.0"): "cu128", ("575.57.08", "2.13.0"): "cu126",
    ("580.65.06", "2.11.0"): "cu130", ("580.65.06", "2.13.0"): "cu130",
}


def stand_in_wheel(folder: Path, version: str, build: str, *, cuda_available: bool = False) -> Path:
    """A wheel named like PyTorch's whose `torch` module reports its version and CUDA build."""
    name = f"torch-{version}+{build}-{PY_TAG}-{PY_TAG}-linux_x86_64.whl"
    cuda = f"'{build[2:-1]}.{build[-1]}'" if build.startswith("cu") else "None"
    info = f"torch-{version}+{build}.dist-info"
    files = {
        "torch/__init__.py": f"__version__ = '{version}+{build}'\nclass version:\n    cuda = {cuda}\n"
                             f"class cuda:\n    @staticmethod\n    def is_available():\n        return {cuda_available}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}+{build}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {PY_TAG}-{PY_TAG}-linux_x86_64\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return folder / name


def page(links: list[str]) -> str:
    body = "\n".join(f'<a href="/whl/{link}">{Path(link).name}</a><br/>' for link in links)
    return f"<!DOCTYPE html>\n<html><body>\n<h1>Links for torch</h1>\n{body}\n</body></html>\n"


@pytest.fixture(scope="module")
def pytorch_index(tmp_path_factory):
    """http://127.0.0.1:PORT/whl: /whl/torch/ lists every wheel, /whl/<build>/torch/ one build's."""
    root = tmp_path_factory.mktemp("index")
    every: list[str] = []
    for version, builds in PUBLISHED.items():
        for build in builds:
            wheel = stand_in_wheel(root / "whl" / build, version, build)
            every.append(f"{build}/{wheel.name}")
    for build in {b for builds in PUBLISHED.values() for b in builds}:
        mine = [link for link in every if link.startswith(f"{build}/")]
        (root / "whl" / build / "torch").mkdir(parents=True, exist_ok=True)
        (root / "whl" / build / "torch" / "index.html").write_text(page(mine).replace("%2B", "+"))
    (root / "whl" / "torch").mkdir(parents=True)
    (root / "whl" / "torch" / "index.html").write_text(page(every))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D102 (one line per request would flood the test output)
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def fake_gpu(folder: Path, driver: str | None) -> Path:
    """A bin folder with an nvidia-smi that reports `driver` (none at all for a CPU node)."""
    folder.mkdir(parents=True, exist_ok=True)
    if driver:
        smi = folder / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\ncase \"$*\" in *driver_version*) echo {driver};; *) echo 'NVIDIA-SMI {driver}';; esac\n")
        smi.chmod(0o755)
    return folder


def run_stage(tmp_path: Path, index: str, driver: str | None, version: str, *, with_uv: bool = True, venv: Path | None = None):
    """Create a venv and run the setup's generated torch stage in it, as a node would."""
    venv = venv or tmp_path / "venv"
    bin_dir = fake_gpu(tmp_path / "bin", driver)
    uv = shutil.which("uv")
    if not venv.exists():
        if with_uv:
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=60)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    path = f"{bin_dir}:{Path(uv).parent if with_uv else '/nonexistent'}:/usr/bin:/bin"
    env = {"PATH": path, "HOME": str(tmp_path), "VENV": str(venv), "FINETUNE_TORCH_INDEX_URL": index}
    stage = _indent(torch_stage(version), 4)  # exactly as it sits inside the setup script (indented)
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + installer_stage() + stage], env=env, capture_output=True,
                          text=True, timeout=180)
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True, env={"PATH": path}, timeout=60)
    return done, installed.stdout.strip() if installed.returncode == 0 else None


@pytest.mark.parametrize("driver,version", list(EXPECTED))
def test_setup_installs_torch_from_the_build_the_driver_runs(tmp_path, pytorch_index, driver, version):
    expected = EXPECTED[driver, version]
    done, installed = run_stage(tmp_path, pytorch_index, driver, version)
    if expected is None:
        assert done.returncode == 3 and installed is None
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr
        line = errors[0]
        assert f"NVIDIA driver {driver}" in line and f"torch {version}" in line and "resources.image" in line
        assert all(build in line for build in PUBLISHED[version] if build != "cpu")  # the builds that exist
    else:
        assert done.returncode == 0, done.stderr
        assert installed == f"{version}+{expected}"
        assert (tmp_path / "venv" / ".torch-index").read_text().strip() == f"{pytorch_index}/{expected}"
        assert f"installing torch {version} from {pytorch_index}/{expected} with uv" in done.stdout


def test_an_unreachable_index_is_one_line(tmp_path):
    """DNS or a firewall: not a traceback, and not a silent install from the wrong place."""
    from helpers import free_port

    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "sdk" / "backends" / "torch_index.py"), "--torch", "2.13.0",
                          "--index", f"http://127.0.0.1:{free_port()}/whl"], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{fake_gpu(tmp_path / 'bin', '535.216.01')}:/usr/bin:/bin"})
    assert out.returncode == 3 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "FINETUNE_TORCH_INDEX_URL" in out.stderr and "535.216.01" in out.stderr


def test_a_cpu_node_installs_from_the_default_index(tmp_path, pytorch_index):
    """No driver: the chooser says nothing and pip's default index applies (here: the same local index
    given as the default through PIP_INDEX_URL would be; the chooser's own answer is what is checked)."""
    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "sdk" / "backends" / "torch_index.py"), "--torch", "2.13.0",
                          "--index", pytorch_index], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{fake_gpu(tmp_path / 'bin', None)}:/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout == "" and "no NVIDIA driver" in out.stderr


@pytest.mark.slow
def test_pip_installs_where_the_node_has_no_uv(tmp_path, pytorch_index):
    done, installed = run_stage(tmp_path, pytorch_index, "535.216.01", "2.13.0", with_uv=False)
    assert done.returncode == 0, done.stderr
    assert "with pip" in done.stdout
    assert installed == "2.13.0+cu126"


def test_an_image_torch_that_is_the_pin_and_sees_the_gpu_is_kept(tmp_path, pytorch_index):
    venv = tmp_path / "venv"
    subprocess.run([shutil.which("uv"), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=60)
    wheel = stand_in_wheel(tmp_path / "image", "2.13.0", "cu128", cuda_available=True)  # a build the index never had
    subprocess.run([shutil.which("uv"), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)],
                   check=True, timeout=60)
    done, installed = run_stage(tmp_path, pytorch_index, "570.133.20", "2.13.0", venv=venv)
    assert done.returncode == 0 and "keeping the environment's torch 2.13.0+cu128" in done.stdout
    assert installed == "2.13.0+cu128"


def test_an_index_page_that_lacks_the_version_falls_back_to_the_next_build():
    """The combined page lists cu130 but its own page does not hold the wheel: the next build down is tried."""
    listing = page([f"cu130/torch-2.13.0+cu130-{PY_TAG}-{PY_TAG}-manylinux_2_28_x86_64.whl",
                    f"cu126/torch-2.13.0+cu126-{PY_TAG}-{PY_TAG}-manylinux_2_28_x86_64.whl"])
    pages = {"I/torch/": listing, "I/cu130/torch/": page([]), "I/cu126/torch/": listing}
    url, why = choose("2.13.0", "580.65.06", index="I", python_tag=PY_TAG, platform_tag="x86_64", get=pages.get)
    assert url == "I/cu126" and "cu126" in why


def test_an_image_below_the_python_floor_is_refused_in_one_line(tmp_path):
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\ncase \"$*\" in -V) echo 'Python 3.8.10';; *) exit 1;; esac\n")
    old.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + venv_stage()], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr.strip().count("\n") == 0 and "Python 3.8.10" in done.stderr and "resources.image" in done.stderr


def test_an_image_without_the_venv_module_gets_its_environment_from_uv(tmp_path):
    """Ubuntu without python3-venv: `python3 -m venv` fails; uv makes the environment instead."""
    shim = tmp_path / "shim"
    shim.mkdir()
    python = shim / "python3"
    python.write_text(f"#!/bin/sh\n[ \"$1\" = \"-m\" ] && [ \"$2\" = \"venv\" ] && {{ echo 'No module named venv' >&2; exit 1; }}\n"
                      f"exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    env = {"PATH": f"{shim}:{Path(shutil.which('uv')).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "VENV": str(tmp_path / "venv"),
           "FINETUNE_NODE_PYTHON": str(python)}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + venv_stage()], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "venv" / "bin" / "python").exists()
    assert os.access(tmp_path / "venv" / "bin" / "python", os.X_OK)


@pytest.mark.parametrize("overrides,extras,env", [
    ([], "train", {}),
    (["distributed=deepspeed"], "train,deepspeed", {}),
    (["distributed.strategy=deepspeed", "distributed.offload=true"], "train,deepspeed", {"DS_BUILD_OPS": "0", "DS_BUILD_CPU_ADAM": "1"}),
    (["train.liger_kernels=true"], "train,liger", {}),
    (["train.attention=flash_attention_2"], "train", {}),  # flash-attn: built after torch, not an extra
    (["tracking=[tensorboard, mlflow]"], "train,mlflow,tensorboard", {}),
    (["distributed=fsdp", "train.liger_kernels=true", "tracking=[wandb]"], "train,liger,wandb", {}),
])
def test_the_node_installs_what_the_spec_uses_and_nothing_more(overrides, extras, env):
    import tomllib

    from sdk.backends.skypilot import extras_for, install_env, setup_script
    from sdk.core.recipes import load_recipe

    spec = load_recipe("tiny", overrides)
    assert extras_for(spec) == extras and install_env(spec) == env
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.split(",")) <= set(declared)  # every extra the node asks for exists
    script = setup_script(spec, {})
    assert f"finetune[{extras}]" in script and ("DS_BUILD_CPU_ADAM=1" in script) == bool(env)
    assert ("--no-build-isolation flash-attn" in script) == ("train.attention=flash_attention_2" in overrides)


@pytest.mark.slow
def test_a_dry_run_shows_the_plan_without_cloud_credentials(run_cli, tmp_path):
    """The first command a new cloud user types: no AWS account yet, the data in s3:// cannot be read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FINETUNE_HOME=str(tmp_path / "home"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "launch", "llama8b", "--dry-run"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith("warning: data not checked: data.source: s3://")
    assert "setup: |" in done.stdout and "torch_index.py" in done.stdout and "would run qlora" in done.stdout
    assert "a 535 driver gets the newest 12.x build" in done.stdout and "node setup: finetune[train]" in done.stdout
    launched = subprocess.run([sys.executable, "-m", "sdk.cli", "launch", "llama8b"], capture_output=True, text=True,
                              env=env, cwd=Path(__file__).parents[1], timeout=120)
    assert launched.returncode != 0 and "no AWS credentials" in launched.stderr and "Traceback" not in launched.stderr


GRPO = ["objective={name: grpo, rewards: [exact_match]}", "train.batch_size=8", "resources.accelerators=L4:1"]


@pytest.mark.parametrize("overrides,bound", [
    (GRPO, ("vllm",)),  # rollouts: auto on a GPU node
    ([*GRPO, "objective.rollouts=vllm_server"], ("vllm",)),
    ([*GRPO, "objective.rollouts=transformers"], ()),
    (GRPO[:-1], ()),  # no accelerators: a CPU node, where vLLM cannot run
    (["resources.accelerators=L4:1"], ()),  # sft
])
def test_vllm_is_set_up_only_for_specs_that_generate_with_it(overrides, bound):
    import tomllib

    from sdk.backends.node_setup import cuda_bound_extras, extras_for, setup_script
    from sdk.core.recipes import load_recipe

    spec = load_recipe("tiny", overrides)
    assert cuda_bound_extras(spec) == bound and "vllm" not in extras_for(spec)  # never in the main install line
    script = setup_script(spec, {})
    assert ('pyinstall  "finetune[vllm]==' in script) == bool(bound) and ("vLLM 0.31.0" in script) == bool(bound)
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "vllm==0.31.0" in project["optional-dependencies"]["vllm"]


@pytest.mark.parametrize("build,installs", [("cu130", True), ("cu126", False), ("cpu", False)])
def test_vllm_installs_only_beside_a_cuda_13_torch(tmp_path, build, installs):
    """PyPI's vLLM 0.31.0 is a CUDA 13 build: the generated stage reads the venv's torch and installs it, or says why
    not in one line (pyinstall stands in for the install; the check of the torch build runs for real)."""
    from sdk.backends.node_setup import cuda_extras_stage
    from sdk.core.recipes import load_recipe

    venv = tmp_path / "venv"
    subprocess.run([shutil.which("uv"), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=60)
    wheel = stand_in_wheel(tmp_path / "wheels", "2.13.0", build)
    subprocess.run([shutil.which("uv"), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)],
                   check=True, timeout=60)
    stage = cuda_extras_stage(load_recipe("tiny", GRPO), "-c pins.txt", "pkg.whl[{extra}]")
    installed = tmp_path / "installed"
    stub = f'pyinstall() {{ echo "$@" > {installed}; }}\n'
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + stub + _indent(stage, 4)], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "VENV": str(venv)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert installed.exists() == installs
    if installs:
        assert installed.read_text().split() == ["-c", "pins.txt", "pkg.whl[vllm]"]
        assert "installing vLLM 0.31.0 for objective.rollouts" in done.stdout
    else:
        assert f"not installing vLLM 0.31.0, a CUDA 13 build on PyPI: this torch is 2.13.0+{build}" in done.stdout


def test_the_node_wheel_holds_every_module_of_the_source_tree(tmp_path, monkeypatch):
    """setup.py finds the packages (a written list had left sdk.objectives out: every node stopped at its first
    import), and build_dist refuses a wheel that lacks a module of the source tree, before any cluster starts."""
    from sdk.backends.node_setup import build_dist, missing_from_wheel, project_root
    from sdk.core.errors import LaunchError

    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    root = project_root()
    wheel = build_dist()["wheel"]
    assert missing_from_wheel(wheel, root) == []
    with zipfile.ZipFile(wheel) as archive:
        held = archive.namelist()
    assert {"sdk/objectives/base.py", "launch/objectives/__init__.py", "finetune_recipes/tiny.yaml"} <= set(held)
    partial = tmp_path / "partial.whl"
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w") as target:
        for name in held:
            if not name.startswith("sdk/objectives/"):
                target.writestr(name, source.read(name))
    assert "sdk.objectives.base" in missing_from_wheel(partial, root)

    def partial_build(argv, **kwargs):
        shutil.copy(partial, Path(argv[argv.index("-w") + 1]) / "finetune-0.1.0-py3-none-any.whl")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "other-home"))
    monkeypatch.setattr("sdk.backends.node_setup.subprocess.run", partial_build)
    with pytest.raises(LaunchError, match=r"lacks sdk\.objectives\.\w+, .*setup\.py finds the packages"):
        build_dist()
    assert not list((tmp_path / "other-home" / "dist").glob("*/*.whl"))  # not kept for the next launch
