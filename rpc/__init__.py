"""The Blynk.NCP RPC layer shared by both emulated sides: types, interface table, messages
and the sans-IO endpoint."""

from .endpoint import DEFER, Call, Endpoint, Framed, Incoming
from .interface import INTERFACE, INVOKE, NCP, ONEWAY, PRIMARY, Function, Interface
from .message import Invoke, Oneway, Result, Status, parse
from .types import ArgsError

__all__ = [
    "DEFER", "Call", "Endpoint", "Framed", "Incoming", "INTERFACE", "INVOKE", "NCP", "ONEWAY", "PRIMARY",
    "Function", "Interface", "Invoke", "Oneway", "Result", "Status", "parse", "ArgsError",
]
