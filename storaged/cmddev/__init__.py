"""Command devices: LUNs whose written blocks are commands to the array (spec Fig. 5-9)."""

from .block import Command, Directory, Response, ResultStatus, SlotState
from .commands import ArrayControl, Process, build_dispatcher
from .dispatch import CommandDispatcher, CommandError
from .store import CommandDeviceStore

__all__ = ["ArrayControl", "Command", "CommandDeviceStore", "CommandDispatcher", "CommandError", "Directory",
           "Process", "Response", "ResultStatus", "SlotState", "build_dispatcher"]
