"""Which ports `eaas up` binds: a port the user named must be free (checked before anything starts);
a port left to us is the conventional one when it is free, otherwise any free one, so two `eaas up`
on one machine both serve."""

from __future__ import annotations

import socket

from eaas.errors import UserError


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def any_free_port(host: str, taken: set[int]) -> int:
    """A port the kernel says is free now and that this run has not handed out yet."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def choose_ports(host: str, wanted: list[tuple[str, int | None, int | None]]) -> list[int]:
    """wanted: (flag, the user's port or None, the conventional port or None) for each port to bind.
    A user's port that is taken is a UserError naming the flag; the rest fall back to free ports."""
    chosen: list[int] = []
    for flag, given, conventional in wanted:
        if given is not None:
            if given in chosen or not port_is_free(host, given):
                raise UserError(f"{flag}: port {given} on {host} is already in use")
            chosen.append(given)
        elif conventional is not None and conventional not in chosen and port_is_free(host, conventional):
            chosen.append(conventional)
        else:
            chosen.append(any_free_port(host, set(chosen)))
    return chosen
