# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py that ansible-test downloads.

ansible-test bootstraps pip in the virtual environments of its sanity tests with
``get-pip-<version>.py`` from ci-files.testing.ansible.com, which is unreachable here.  It
uses ``~/.ansible/test/cache/get_pip_<version>.py`` instead when that file exists, and calls it
with the arguments it would give get-pip.py.  tests/utils/lib.sh copies this file there (under
a HOME in the git-ignored .cache/).  It installs the pip bundled with Python (ensurepip) and then
runs ``pip install`` with the same arguments, so the requested pip version still comes from the
package index the machine's pip configuration points at.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

ARGS = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]

ensurepip.bootstrap(upgrade=False, default_pip=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null, which would hide /etc/pip.conf (CA bundle, index).
os.environ.pop("PIP_CONFIG_FILE", None)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet"] + ARGS))
