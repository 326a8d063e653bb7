"""hostctl: the host-side CLI and client library of storaged's command devices.

* :mod:`hostctl.device` - transports: :class:`~hostctl.device.IscsiDevice` (``iscsi://`` URLs) and
  :class:`~hostctl.device.BlockDevice` (``/dev/sdX`` of an open-iscsi session, loop devices, files)
* :mod:`hostctl.client` - :class:`~hostctl.client.CommandDeviceClient` (the host protocol) and
  :class:`~hostctl.client.Host` (array name -> client, routing through the local array)
* :mod:`hostctl.config` - the host config file
* :mod:`hostctl.__main__` - the CLI, ``main(argv) -> int``
"""

from storaged import __version__  # one version for the distribution: see storaged/__init__.py

__all__ = ["__version__"]
