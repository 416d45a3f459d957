"""The connector protocol (``wallaroo.experimental``): configs, as in the original API, and
the client side in Python (asyncio).

- ``SourceConnectorConfig``: the worker listens for clients such as
  ``AtLeastOnceSourceConnector`` (or ``python -m wallaroo.experimental.send_lines``), which
  keeps every message until the worker acknowledges it and resends after a RESTART or a lost
  connection; the worker drops duplicates.
- ``SinkConnectorConfig``: the worker connects to a two-phase-commit sink server such as
  ``SinkServer`` (``python -m wallaroo.experimental.sink_server``), whose output file holds
  only committed transactions.
- ``stream_id_for(name)``: a stream's id from its name; ``ProtocolError`` (a bad frame) and
  ``ConnectorError`` (refused, lost, voted down).

The frames are in ``wallaroo.connectors.connector_wire``.

Example::

    >>> from wallaroo.experimental import SourceConnectorConfig
    >>> SourceConnectorConfig("feed", None, None, 7100, "cookie", 10, 8).kind
    'source_connector'
"""
from wallaroo.api.configs import SinkConnectorConfig, SourceConnectorConfig
from wallaroo.connectors.connector_wire import ConnectorError, ProtocolError
from wallaroo.experimental.source_client import AtLeastOnceSourceConnector, stream_id_for

__all__ = ["AtLeastOnceSourceConnector", "ConnectorError", "ProtocolError", "SinkConnectorConfig",
           "SinkServer", "SourceConnectorConfig", "stream_id_for"]


def __getattr__(name: str):
    # Imported on first use, so ``python -m wallaroo.experimental.sink_server`` runs the
    # module once (not a second time after the package imported it).
    if name == "SinkServer":
        from wallaroo.experimental.sink_server import SinkServer
        return SinkServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
