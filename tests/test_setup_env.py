"""scripts/setup_env.sh: its failures end in one clear line, and a second run changes nothing.

These run the real script (bash, pip, venv) against scratch environments or against the
environment the tests run in, without changing it. No network is used: the "no network" cases
point pip at a closed loopback port.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup_env.sh"
VENV = Path(sys.prefix)  # the environment running the tests (set up by the same script)

pytestmark = pytest.mark.skipif(
    not (VENV / "bin" / "python").exists() or sys.prefix == sys.base_prefix,
    reason="the tests do not run inside a virtual environment",
)


def _run(env_extra, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTKD_", "PIP_"))}
    env.pop("PYTHONPATH", None)
    env.update(env_extra)
    p = subprocess.run(
        ["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=timeout
    )
    return p.returncode, p.stdout, p.stderr


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("[setup] ERROR:")]


def test_unknown_detectron2_choice():
    rc, _, err = _run({"TEXTKD_DETECTRON2": "latest"})
    assert rc == 2
    assert _error_lines(err) == [
        "[setup] ERROR: TEXTKD_DETECTRON2=latest is not one of auto, keep, official, registry, none"
    ]


def test_missing_interpreter(tmp_path):
    rc, _, err = _run({"PYTHON": str(tmp_path / "python9"), "TEXTKD_VENV": str(tmp_path / "v")})
    assert rc == 1
    (line,) = _error_lines(err)
    assert "no Python interpreter" in line and "python9" in line and "PYTHON=" in line


def test_python_without_venv_support(tmp_path):
    """A python3 whose ``-m venv`` fails as Debian's does without python3-venv: one line naming
    the cause and the fix, and no half-made environment left behind."""
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; echo "The virtual '
        'environment was not created successfully because ensurepip is not available." >&2; '
        "exit 1; fi\n"
        f'exec {sys.base_prefix}/bin/python3 "$@"\n'
    )
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    rc, _, err = _run({"PYTHON": str(fake), "TEXTKD_VENV": str(venv)})
    assert rc == 1
    (line,) = _error_lines(err)
    assert "cannot create a virtual environment" in line
    assert "ensurepip is not available" in line and "python3-venv" in line
    assert not venv.exists()


def test_detectron2_that_imports_but_is_broken(tmp_path):
    broken = tmp_path / "site" / "detectron2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise ImportError("libdetectron2_ops.so: cannot open shared object file")\n'
    )
    rc, out, err = _run({"TEXTKD_VENV": str(VENV), "PYTHONPATH": str(tmp_path / "site")})
    assert rc == 1
    (line,) = _error_lines(err)
    assert "detectron2 imports but is broken" in line
    assert "libdetectron2_ops.so" in line and "pip uninstall detectron2" in line
    assert "Traceback" not in err


def _scratch_venv(tmp_path):
    """A new venv that sees this environment's packages (torch, textkd's dependencies) through a
    .pth file, but not detectron2, with textkd's install already recorded."""
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig;print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = subprocess.run(
        [sys.executable, "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "textkd-test-main.pth").write_text(ours + "\n")
    stamp = subprocess.run(
        "cat setup.py pyproject.toml | sha256sum | cut -c1-16",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (venv / ".textkd-install-stamp").write_text(f"{ROOT} {stamp}\n")
    return venv


def test_package_index_that_refuses(tmp_path):
    """No network: the registry build of detectron2 cannot be fetched. pip's own lines are shown,
    then one line saying what failed and what to do."""
    venv = _scratch_venv(tmp_path)
    rc, out, err = _run(
        {
            "TEXTKD_VENV": str(venv),
            "TEXTKD_DETECTRON2": "registry",
            "PYTHONPATH": str(ROOT / "projects" / "TextKD"),
            "PIP_CONFIG_FILE": "/dev/null",
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
            "PIP_FIND_LINKS": "",
            "PIP_RETRIES": "0",
            "PIP_TIMEOUT": "2",
        }
    )
    assert rc == 1, out + err
    (line,) = _error_lines(err)
    assert "could not download sal-detectron2==0.7.2" in line
    assert "check the network and the package index" in line
    assert "TEXTKD_DETECTRON2=keep" in line
    assert (
        not (venv / "textkd-detectron2").exists() and not (venv / "textkd-detectron2.tmp").exists()
    )


def _freeze():
    return subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    ).stdout


def test_second_run_changes_nothing():
    """The environment running the tests was made by this script: running it again installs
    nothing and keeps every package as it is."""
    before = _freeze()
    mode = os.environ.get("TEXTKD_DETECTRON2", "auto")
    rc, out, err = _run({"TEXTKD_VENV": str(VENV), "TEXTKD_DETECTRON2": mode})
    assert rc == 0, err
    assert "installing" not in out, out
    assert "torch/torchvision pair already works" in out
    assert "textkd already installed" in out
    if mode == "none":
        assert "detectron2: not installed (TEXTKD_DETECTRON2=none)" in out
    else:
        assert "already works, kept" in out, out
    assert _freeze() == before
