# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The boot engine zipapp: the same bytes every time, and runnable by a bare Python."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from ansible.errors import AnsibleLookupError

from ansible_collections.meshops.sidecar.plugins.lookup import boot_engine

PACKAGE = "ansible_collections/meshops/sidecar/plugins/module_utils/"
# The collections root this test imports the collection from (.../ansible_collections/..).
COLLECTIONS_ROOT = os.path.abspath(os.path.join(os.path.dirname(boot_engine.__file__), *[".."] * 5))


def names(data):
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def test_the_archive_is_the_same_byte_for_byte():
    assert boot_engine.build_engine() == boot_engine.build_engine()


def test_entries_are_sorted_with_fixed_times_and_modes():
    archive = zipfile.ZipFile(io.BytesIO(boot_engine.build_engine()))
    listed = archive.namelist()
    assert listed == sorted(listed)
    assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in archive.infolist()} == {0o100644}


def test_the_archive_holds_the_package_with_an_init_at_every_level():
    listed = names(boot_engine.build_engine())
    for package in ("ansible_collections/", "ansible_collections/meshops/", "ansible_collections/meshops/sidecar/",
                    "ansible_collections/meshops/sidecar/plugins/", PACKAGE, PACKAGE + "_boot/", PACKAGE + "_capture/",
                    PACKAGE + "_capture/backends/", PACKAGE + "_netns/", PACKAGE + "_system/"):
        assert package + "__init__.py" in listed
    assert PACKAGE + "_boot/apply.py" in listed and PACKAGE + "_capture/run.py" in listed
    assert "__main__.py" in listed
    assert all(name.startswith(PACKAGE) or name == "__main__.py" or name.endswith("/__init__.py") for name in listed)


def test_compiled_files_and_caches_are_left_out(tmp_path):
    (tmp_path / "_pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "_pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "_pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "_pkg" / "stray.pyc").write_bytes(b"\0")
    (tmp_path / "_pkg" / "notes.txt").write_text("not code\n")
    listed = names(boot_engine.build_engine(str(tmp_path)))
    assert PACKAGE + "_pkg/mod.py" in listed
    assert PACKAGE + "_pkg/__init__.py" in listed
    assert not any("__pycache__" in name or name.endswith((".pyc", ".txt")) for name in listed)


def test_the_file_is_named_by_its_content_and_reused(tmp_path):
    path = boot_engine.engine_path(str(tmp_path / "cache"))
    assert os.path.basename(path).startswith("meshops-interception-") and path.endswith(".pyz")
    assert oct(os.stat(str(tmp_path / "cache")).st_mode & 0o777) == "0o700"
    before = os.stat(path).st_mtime_ns
    assert boot_engine.engine_path(str(tmp_path / "cache")) == path
    assert os.stat(path).st_mtime_ns == before  # not written again
    assert sorted(os.listdir(str(tmp_path / "cache"))) == [os.path.basename(path)]


def test_a_cache_dir_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(AnsibleLookupError, match="only it can write"):
        boot_engine.engine_path(str(shared))


def run_bare(*args, **kwargs):
    """The target's way: a Python with no site-packages (no Ansible) and nothing from the environment."""
    return subprocess.run([sys.executable, "-I", "-S"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False, **kwargs)


def test_a_bare_python_runs_the_archive(tmp_path):
    path = boot_engine.engine_path(str(tmp_path / "cache"))
    proc = run_bare(path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: meshops-interception-apply [-h] [--check] INSTANCE_DIR")
    proc = run_bare(path, str(tmp_path))
    assert proc.returncode == 2
    assert "cannot read %s/apply.json" % tmp_path in proc.stderr


def test_a_bare_python_imports_the_engine_from_the_archive(tmp_path):
    path = boot_engine.engine_path(str(tmp_path / "cache"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from ansible_collections.meshops.sidecar.plugins.module_utils._boot import apply; "
            "print(apply.__file__)")
    proc = run_bare("-c", code, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.join(path, PACKAGE + "_boot/apply.py")


def test_the_lookup_returns_the_path_in_a_playbook(tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT, ANSIBLE_HOME=str(tmp_path / "home"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    cache = str(tmp_path / "cache")
    expr = "{{ lookup('meshops.sidecar.boot_engine', cache_dir=%s) | to_json }}" % json.dumps(cache)
    proc = subprocess.run(
        [sys.executable, "-m", "ansible.cli.adhoc", "localhost", "-m", "ansible.builtin.debug", "-a", "msg=" + expr],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert boot_engine.engine_path(cache) in proc.stdout
