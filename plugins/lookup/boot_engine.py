# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: boot_engine
author:
  - meshops.sidecar developers (@meshops)
version_added: 0.1.0
short_description: Build the capture engine the interception role's boot unit runs
description:
  - Builds, on the controller, a Python zip application (C(.pyz)) of this collection's C(plugins/module_utils) (the
    engine of M(meshops.sidecar.istio_redirect_chains) and M(meshops.sidecar.netns)) and returns its path.
  - The boot unit of the R(meshops.sidecar.interception,ansible_collections.meshops.sidecar.interception_role) role
    runs it with the target's own Python 3 and no Ansible (C(python3 ENGINE.pyz [--check] INSTANCE_DIR)), so
    that the rules applied at boot, and what is never touched, are exactly the modules' own.
  - The archive is the same byte for byte for the same collection (sorted entries, fixed timestamps and modes, no
    compiled files), so copying it to the target again reports no change.
  - The file is named by the digest of its content and written atomically into O(cache_dir); an existing file
    with that name is reused.
options:
  cache_dir:
    description:
      - Directory on the controller the archive is written to; created (mode C(0700)) when missing.
      - Default is C(meshops-sidecar-UID) in the controller's temporary directory.
    type: path
notes:
  - The archive holds the C(ansible_collections.meshops.sidecar.plugins.module_utils) package with an explicit
    C(__init__.py) at each level and a C(__main__.py) that runs C(_boot.apply.main).
seealso:
  - module: meshops.sidecar.istio_redirect_chains
  - module: meshops.sidecar.netns
"""

EXAMPLES = r"""
- name: Install the capture engine on the target
  ansible.builtin.copy:
    src: "{{ lookup('meshops.sidecar.boot_engine') }}"
    dest: /usr/local/lib/meshops-sidecar/meshops-interception.pyz
    owner: root
    group: root
    mode: "0644"

- name: Re-apply an instance's capture with it (what the boot unit runs)
  ansible.builtin.command:
    argv: [/usr/bin/python3, /usr/local/lib/meshops-sidecar/meshops-interception.pyz,
           /etc/meshops-sidecar/interception/host]
  changed_when: false
"""

RETURN = r"""
_raw:
  description: The path on the controller of the C(.pyz) archive (one element).
  type: list
  elements: path
  sample:
    - /tmp/meshops-sidecar-1000/meshops-interception-3f2a9c1b7d4e.pyz
"""

import hashlib
import io
import os
import stat
import tempfile
import zipfile

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

COLLECTION_PACKAGE = ("ansible_collections", "meshops", "sidecar", "plugins", "module_utils")
MODULE_UTILS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
MAIN = (
    "# meshops-interception-apply [--check] INSTANCE_DIR\n"
    "from ansible_collections.meshops.sidecar.plugins.module_utils._boot.apply import main\n"
    "raise SystemExit(main())\n"
)
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def _entry(archive, name, data):
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so that the mode below means the same everywhere
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data)


def _sources(root):
    """``(path inside the package, file)`` of every ``.py`` under ``root``, sorted; compiled files are left out."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if name != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    return sorted(found)


def build_engine(module_utils_dir=MODULE_UTILS_DIR):
    """The bytes of the zip application: the package, an ``__init__.py`` at every level, and ``__main__.py``."""
    entries = {}
    for relative, path in _sources(module_utils_dir):
        with open(path, "rb") as handle:
            entries["/".join(COLLECTION_PACKAGE + (relative,))] = handle.read()
    # Namespace packages inside a zip are not found by every Python: every level is a regular package.
    packages = {"/".join(COLLECTION_PACKAGE[:depth]) for depth in range(1, len(COLLECTION_PACKAGE) + 1)}
    packages.update("/".join(COLLECTION_PACKAGE) + "/" + os.path.dirname(relative)
                    for relative, dummy in _sources(module_utils_dir) if "/" in relative)
    for package in packages:
        entries.setdefault(package + "/__init__.py", b"")
    entries["__main__.py"] = MAIN.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            _entry(archive, name, entries[name])
    return buffer.getvalue()


def _private_dir(path):
    """Create ``path`` (mode 0700) or check that an existing one is a directory of ours that others cannot write."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise AnsibleLookupError("boot_engine: %s is not a directory of this user that only it can write" % path)


def write_engine(cache_dir, data):
    """Write ``data`` as ``meshops-interception-DIGEST.pyz`` in ``cache_dir`` (atomically) and return its path."""
    path = os.path.join(cache_dir, "meshops-interception-%s.pyz" % hashlib.sha256(data).hexdigest()[:16])
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return path
    except OSError:
        pass
    handle, scratch = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as output:
            output.write(data)
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)  # concurrent forks write the same bytes: any of them may win
    except BaseException:
        os.unlink(scratch)
        raise
    return path


def engine_path(cache_dir=None):
    """Build the engine into ``cache_dir`` (default: a private directory in the temporary one); its path."""
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "meshops-sidecar-%d" % os.getuid())
    try:
        _private_dir(cache_dir)
        return write_engine(cache_dir, build_engine())
    except OSError as exc:
        raise AnsibleLookupError("boot_engine: cannot build the engine in %s: %s" % (cache_dir, exc))


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if terms:
            raise AnsibleLookupError("boot_engine takes no terms, got %r" % (terms,))
        return [engine_path(self.get_option("cache_dir"))]
