#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "sanity": every ansible-test sanity test, from a real ansible_collections/ copy, with no
# tests/sanity/ignore-*.txt (a problem is fixed, not ignored). The sanity tests' own venvs are
# kept under .cache/home/.ansible/test, so only the first run pays for creating them.
# Every test runs on the venv's Python (the controller's). The multi-version ones (compile,
# import) also run on the target Pythons SANITY_TARGET_PYTHONS names (space-separated X.Y; by
# default none): the gate "cores" spreads the target Pythons of the supported ansible-core range
# over its versions, so that each runs once (see gates/cores.sh). A named Python this ansible-test
# does not support, or the machine lacks, fails the gate: nothing is dropped silently.
# VENV_DIR selects another ansible-core (the gate "cores" runs this script once per version).
# Extra arguments go to ansible-test (e.g. --test validate-modules); with --python X.Y everything
# runs on that one Python instead.
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv

shopt -s nullglob
ignores=("$MESHOPS_ROOT"/tests/sanity/ignore-*.txt)
if [ ${#ignores[@]} -gt 0 ]; then
    die "sanity ignore files are not allowed, fix the findings instead: ${ignores[*]#"$MESHOPS_ROOT/"}"
fi

core_version="$("$VENV_DIR/bin/python" -c 'import ansible.release as r; print(r.__version__)')"
sync_collection_copy sanity
case " $* " in
    *" --python "* | *" --python="*)
        log "ansible-core $core_version: every test on the Python given with --python"
        ansible_test sanity --local --color no "$@"
        exit
        ;;
esac

# The controller is the venv's Python, as with --local; every target Python is named.
read -r -a supported <<<"$(ansible_test_python_versions "$VENV_DIR")"
read -r -a extra <<<"${SANITY_TARGET_PYTHONS:-}"
targets=(--target-python "$TEST_PYTHON_VERSION")
# Parts of ansible-test (the import test's virtualenv check) look a target Python up by name,
# pythonX.Y on PATH, where pyenv's shims answer only for the active version: each named one is
# linked into a directory of this run's, put on PATH right after the venv.
pythons_dir="$CACHE_DIR/pythons/sanity${MESHOPS_COPY_SUFFIX:+-$MESHOPS_COPY_SUFFIX}"
rm -rf "$pythons_dir"
mkdir -p "$pythons_dir"
export PATH="$VENV_DIR/bin:$pythons_dir:$PATH"
for version in "${extra[@]}"; do
    [ "$version" != "$TEST_PYTHON_VERSION" ] || continue
    [[ " ${supported[*]} " == *" $version "* ]] \
        || die "SANITY_TARGET_PYTHONS: ansible-core $core_version does not support Python $version on targets (it does ${supported[*]})"
    exe="$(find_python_version "$version")" \
        || die "SANITY_TARGET_PYTHONS: Python $version is not on this machine (neither python$version on PATH nor a pyenv $version.*)"
    ln -s "$exe" "$pythons_dir/python$version"
    targets+=(--target-python "$version@$exe")
done
log "ansible-core $core_version: every test on Python $TEST_PYTHON_VERSION (the venv's)${extra[*]:+; compile and import also on Python ${extra[*]}}"
ansible_test sanity --controller "origin:python=$TEST_PYTHON_VERSION" "${targets[@]}" --color no "$@"
