"""Durations and listen addresses as written in the configuration file."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

DURATION_HELP = 'a duration: "50ms", "10s", "5m", "1h", or a plain number of seconds'


def parse_duration(value: object) -> float:
    """Return ``value`` ("50ms", "10s", "5m", "1h", or a number of seconds) in seconds.

    Raises PydanticCustomError (a ValueError) naming the accepted forms.
    """
    if isinstance(value, bool):
        raise _duration_error()
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise _duration_error()
    if seconds < 0 or not math.isfinite(seconds):
        raise _duration_error()
    return seconds


def _duration_error() -> PydanticCustomError:
    return PydanticCustomError("config", f"must be {DURATION_HELP}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds; the file may say "50ms", "10s", "5m", "1h" or a number of seconds."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP address to listen on: ``host`` (an IP address or a name) and ``port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: object) -> ListenAddress:
    """Parse "HOST:PORT" or "[IPV6]:PORT" (port 0..65535; 0 lets the system pick one)."""
    if isinstance(value, ListenAddress):
        return value
    if not isinstance(value, str):
        raise _listen_error()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise _listen_error()
    if host.startswith("["):
        if not host.endswith("]"):
            raise _listen_error()
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _listen_error() from None
    elif ":" in host:
        raise _listen_error()  # a bare IPv6 address is ambiguous: require brackets
    return ListenAddress(host, int(port_text))


def _listen_error() -> PydanticCustomError:
    return PydanticCustomError("config", 'must be "HOST:PORT" (e.g. 127.0.0.1:9464, [::1]:9464)')


Listen = Annotated[ListenAddress, BeforeValidator(parse_listen)]
"""A listen address; the file says "HOST:PORT"."""
