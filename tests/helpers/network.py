"""Tests that must run offline: any network access fails them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torchvision.models._api


@contextmanager
def no_network_access() -> Iterator[None]:
    """Within it, any connection attempt or torchvision weight download raises AssertionError."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    with pytest.MonkeyPatch.context() as patch:
        for module, name in (
            (socket.socket, "connect"),
            (socket, "create_connection"),
            (socket, "getaddrinfo"),
            (torch.hub, "load_state_dict_from_url"),
            (torchvision.models._api, "load_state_dict_from_url"),
        ):
            patch.setattr(module, name, refuse)
        yield
