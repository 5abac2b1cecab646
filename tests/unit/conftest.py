# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests answer for the target with fake runners: no netlink dump reaches this machine's own namespace."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_netlink_dumps(monkeypatch):
    """Every netlink dump is unanswered, so the code asks its tool (the fake runner) instead."""
    from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink

    monkeypatch.setattr(netlink, "dump", lambda protocol, kind, header: None)
