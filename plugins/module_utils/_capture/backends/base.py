# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""The error every backend raises: the tool is missing, or the kernel refused a change."""

from __future__ import annotations


class BackendError(Exception):
    """A backend is missing, or the kernel refused a change; nothing was changed."""
