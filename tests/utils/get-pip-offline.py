# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py that ansible-test downloads.

ansible-test bootstraps pip in the virtual environments of its sanity tests with
``get-pip-<version>.py`` from ci-files.testing.ansible.com, which is unreachable here.  It
uses ``~/.ansible/test/cache/get_pip_<version>.py`` instead when that file exists, and calls it
with the arguments it would give get-pip.py: ``pip==X`` (and, for older ansible-test,
``setuptools==Y wheel==Z``), plus options.  tests/utils/lib.sh copies this file there (under a
HOME in the git-ignored .cache/).

It puts exactly the requested versions into the (empty) virtual environment, quickly: every
sanity test has a venv of its own, one per Python for compile and import, and each ansible-core
version has its own set, so a cold run creates dozens.  ``ensurepip`` followed by a
``pip install`` took 15 to 30 s per venv here (ensurepip also installs setuptools, then pip
replaces itself).  Instead:

1. The wheels of the requested versions are kept in ``wheels/`` next to this file.  Missing ones
   are fetched once with ``pip download`` (run from the pip wheel bundled with this Python's
   ensurepip, so nothing is installed for it), from the package index the machine's pip
   configuration points at.
2. Each wheel, all of them pure ``py3-none-any`` ones, is unpacked into the venv's
   site-packages as pip would install it (files, ``INSTALLER``, and console scripts for its
   ``console_scripts`` entry points, byte-compiled).  A wheel that is not pure is installed with
   the new pip.

The venv then has the same pip (and setuptools, wheel) that get-pip.py would have left.
"""

from __future__ import annotations

import compileall
import configparser
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

IGNORED = ("--no-setuptools", "--no-wheel")
OPTIONS = [arg for arg in sys.argv[1:] if arg.startswith("-") and arg not in IGNORED]
PINS = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
WHEELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wheels")
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)$")


def log(message):
    sys.stderr.write("get-pip-offline: %s\n" % message)


def wheel_name(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def cached_wheel(name, version):
    """The cached pure wheel of name==version, or None."""
    for path in glob.glob(os.path.join(WHEELS, "*.whl")):
        base = os.path.basename(path)
        parts = base[:-4].split("-")
        if len(parts) >= 5 and wheel_name(parts[0]) == wheel_name(name) and parts[1] == version:
            return path
    return None


def bundled_pip():
    """The pip wheel bundled with this Python's ensurepip: runnable as ``python WHEEL/pip``."""
    import ensurepip  # pylint: disable=import-outside-toplevel

    found = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
    if not found:
        sys.exit("get-pip-offline: this Python's ensurepip has no bundled pip wheel")
    return found[-1]


def pip_environment():
    env = dict(os.environ)
    # ensurepip-style runs point PIP_CONFIG_FILE at /dev/null, which would hide /etc/pip.conf.
    if env.get("PIP_CONFIG_FILE") == os.devnull:
        del env["PIP_CONFIG_FILE"]
    return env


def download(pins):
    """Fetch the wheels of the given pins into the cache (atomically: other runs read it at once)."""
    os.makedirs(WHEELS, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=WHEELS)
    try:
        command = [sys.executable, bundled_pip() + "/pip", "download", "--quiet", "--disable-pip-version-check",
                   "--no-deps", "--only-binary", ":all:", "--dest", tmp] + pins
        rc = subprocess.call(command, env=pip_environment())
        if rc != 0:
            sys.exit("get-pip-offline: %s failed with status %d" % (" ".join(command), rc))
        for path in glob.glob(os.path.join(tmp, "*.whl")):
            os.replace(path, os.path.join(WHEELS, os.path.basename(path)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {attr}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""


def unpack(path):
    """Install a pure wheel into this venv as pip would; return False if it is not pure."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        dist_info = sorted({name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")})
        if len(dist_info) != 1:
            return False
        dist_info = dist_info[0]
        metadata = archive.read(dist_info + "/WHEEL").decode("utf-8")
        if "Root-Is-Purelib: true" not in metadata or any(name.split("/")[0].endswith(".data") for name in names):
            return False
        purelib = sysconfig.get_paths()["purelib"]
        archive.extractall(purelib)
        # Byte-compiled as pip does on install: the gates run with PYTHONDONTWRITEBYTECODE, so
        # without .pyc files every later pip run would compile pip again, in memory.
        for top in sorted({name.split("/")[0] for name in names}):
            target = os.path.join(purelib, top)
            if os.path.isdir(target) and not top.endswith(".dist-info"):
                compileall.compile_dir(target, quiet=2)
            elif top.endswith(".py"):
                compileall.compile_file(target, quiet=2)
        with open(os.path.join(purelib, dist_info, "INSTALLER"), "w", encoding="utf-8") as handle:
            handle.write("pip\n")
        entry_points = dist_info + "/entry_points.txt"
        scripts = sysconfig.get_paths()["scripts"]
        if entry_points in names:
            parser = configparser.ConfigParser(delimiters=("=",))
            parser.optionxform = str
            parser.read_file(io.StringIO(archive.read(entry_points).decode("utf-8")))
            if parser.has_section("console_scripts"):
                console_scripts = parser.items("console_scripts")
                if dist_info.lower().startswith("pip-"):
                    # As pip's installer does: the wheel's pipX.Y is that of the Python it was
                    # built on; this Python's takes its place.
                    console_scripts = [item for item in console_scripts if not re.match(r"^pip\d+\.\d+$", item[0])]
                    console_scripts.append(("pip%d.%d" % sys.version_info[:2], dict(console_scripts)["pip"]))
                for script, target in console_scripts:
                    module, call = target.split(":", 1)
                    call = call.strip()
                    script_path = os.path.join(scripts, script.strip())
                    with open(script_path, "w", encoding="utf-8") as handle:
                        handle.write(SCRIPT.format(python=sys.executable, module=module.strip(),
                                                   attr=call.split(".")[0], call=call))
                    os.chmod(script_path, 0o755)
    return True


def main():
    pins = []
    for pin in PINS:
        match = PIN.match(pin)
        if not match:
            sys.exit("get-pip-offline: expected NAME==VERSION, got %r (arguments: %s)" % (pin, sys.argv[1:]))
        pins.append(match.groups())
    missing = ["%s==%s" % pin for pin in pins if cached_wheel(*pin) is None]
    if missing:
        log("caching wheels of %s in %s" % (" ".join(missing), WHEELS))
        download(missing)
    impure = []
    for name, version in pins:
        path = cached_wheel(name, version)
        if path is None:
            sys.exit("get-pip-offline: pip download did not leave a wheel of %s==%s in %s" % (name, version, WHEELS))
        if not unpack(path):
            impure.append(path)
    if impure:
        # Installed by the pip just unpacked (pip's own wheel is always pure).
        rc = subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"] + OPTIONS + impure,
                             env=pip_environment())
        if rc != 0:
            sys.exit(rc)
    # The venv must now run the requested pip, or ansible-test would fail later and less clearly.
    wanted = dict((wheel_name(name), version) for name, version in pins).get("pip")
    if wanted:
        have = subprocess.check_output([sys.executable, "-c", "import pip; print(pip.__version__)"]).decode().strip()
        if have != wanted:
            sys.exit("get-pip-offline: pip %s wanted, the venv has %s" % (wanted, have))


if __name__ == "__main__":
    main()
