"""rstream: consume a Redis Stream as a member of a consumer group.

At-least-once delivery, heartbeats, failover that claims a dead consumer's pending entries,
retries, dead-lettering and a thread-pool dispatcher for your handler (how it works:
ARCHITECTURE.md in the repository)::

    import rstream

    def handle(message: rstream.Message) -> None:
        print(message.id, message.fields)

    rstream.Consumer(redis="redis://localhost:6379/0", stream="orders", group="billing",
                     consumer_name="billing-1").run(handle)
"""
from .batches import BatchFailed
from .consumer import Consumer
from .errors import (AuthenticationFailed, ConfigError, FatalRedisError, GroupMissing,
                     PermissionDenied, RedisOutOfMemory, RedisUnavailable, RStreamError,
                     ServerError, StreamMissing, TLSConfigError, TransientError, WrongType)
from .events import Event
from .inspection import describe_stream, describe_streams
from .message import Message
from .producer import Producer
from .stats import Stats

__version__ = "0.1.0"

__all__ = ["Consumer", "Producer", "BatchFailed", "Message", "Stats", "Event", "describe_stream",
           "describe_streams", "RStreamError", "ConfigError", "TLSConfigError", "TransientError",
           "RedisUnavailable", "RedisOutOfMemory", "GroupMissing", "StreamMissing",
           "FatalRedisError", "AuthenticationFailed", "PermissionDenied", "WrongType",
           "ServerError", "__version__"]
