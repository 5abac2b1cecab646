# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mirror a checkout into a real ansible_collections/NAMESPACE/NAME directory.

ansible-test refuses to run from a symlinked collection path, so the gates work on a copy.
The copy holds exactly the files git would put in a fresh clone plus the untracked files
that are not ignored (work in progress), so ignored clutter (.venv, .cache, tests/output,
.ansible, __pycache__) never reaches ansible-test or the built tarball.  Files are copied
only when they changed, and files that disappeared from the checkout are removed from the
copy; ansible-test's own output (tests/output) inside the copy is kept.

Usage: python3 sync-collection.py SOURCE_CHECKOUT DESTINATION
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys

# Never copied, even if git does not ignore them (belt and braces for a .gitignore edit, or
# a .venv that is a symlink, which "/.venv/" in .gitignore does not match).
EXCLUDED_TOP_LEVEL = {".git", ".venv", ".cache", ".ansible", ".pytest_cache"}
EXCLUDED_PREFIXES = ("tests/output/",)
# Kept in the destination although they are not in the source: ansible-test's output, and the
# copy's own empty git repository (see lib.sh: it makes ansible-test list the copy's files).
PRESERVED_PREFIXES = ("tests/output/", ".git/")


def source_files(source: str) -> list[str]:
    """Return the checkout's files as relative paths: tracked + untracked-not-ignored."""
    if os.path.isdir(os.path.join(source, ".git")) or os.path.isfile(os.path.join(source, ".git")):
        out = subprocess.run(
            ["git", "-C", source, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            check=True,
            stdout=subprocess.PIPE,
        ).stdout.decode("utf-8")
        names = {name for name in out.split("\0") if name}
    else:  # an exported tree without git: take everything but the known clutter
        names = set()
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for filename in filenames:
                names.add(os.path.relpath(os.path.join(dirpath, filename), source))
    result = []
    for name in sorted(names):
        if (
            name.split("/", 1)[0] in EXCLUDED_TOP_LEVEL
            or name.startswith(EXCLUDED_PREFIXES)
            or "/__pycache__/" in f"/{name}"
        ):
            continue
        # git lists tracked files that were deleted in the work tree: skip them.
        if os.path.lexists(os.path.join(source, name)):
            result.append(name)
    return result


def same(src: str, dst: str) -> bool:
    if os.path.islink(src) or os.path.islink(dst):
        return os.path.islink(src) and os.path.islink(dst) and os.readlink(src) == os.readlink(dst)
    if not os.path.isfile(dst):
        return False
    if os.stat(src).st_mode != os.stat(dst).st_mode:
        return False
    return filecmp.cmp(src, dst, shallow=False)


def sync(source: str, destination: str) -> tuple[int, int]:
    wanted = source_files(source)
    copied = 0
    for name in wanted:
        src = os.path.join(source, name)
        dst = os.path.join(destination, name)
        if same(src, dst):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst) or os.path.isdir(dst):
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            else:
                os.unlink(dst)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
        copied += 1

    keep = set(wanted)
    removed = 0
    for dirpath, dirnames, filenames in os.walk(destination, topdown=False):
        rel_dir = os.path.relpath(dirpath, destination)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        if rel_dir.startswith(PRESERVED_PREFIXES):
            continue
        for filename in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = rel_dir + filename
            if rel not in keep and not rel.startswith(PRESERVED_PREFIXES):
                os.unlink(os.path.join(dirpath, filename))
                removed += 1
        if rel_dir and not os.listdir(dirpath):
            os.rmdir(dirpath)
    return copied, removed


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, destination = (os.path.abspath(arg) for arg in sys.argv[1:])
    parts = destination.split(os.sep)
    if len(parts) < 3 or parts[-3] != "ansible_collections":
        print(f"destination must end in ansible_collections/NAMESPACE/NAME: {destination}", file=sys.stderr)
        return 2
    os.makedirs(destination, exist_ok=True)
    copied, removed = sync(source, destination)
    print(f"synced {source} -> {destination} ({copied} copied, {removed} removed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
