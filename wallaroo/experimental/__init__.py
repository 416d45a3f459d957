"""The connector protocol's configs (``wallaroo.experimental``), as in the original API.

The engine side of the connector protocol is not built yet: an app that uses these configs
stops at start with a clear message.

Example::

    >>> from wallaroo.experimental import SourceConnectorConfig
    >>> SourceConnectorConfig("feed", None, None, 7100, "cookie", 10, 8).kind
    'source_connector'
"""
from wallaroo.api.configs import SinkConnectorConfig, SourceConnectorConfig

__all__ = ["SinkConnectorConfig", "SourceConnectorConfig"]
