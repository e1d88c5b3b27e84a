"""The Kafka bus: Avro-coded producers and consumers with tracing and dead letters.

    from cocoon.core.bus import BusProducer, BusConsumer, Message, RejectRecord

Topic provisioning (`cocoon topics apply`) is in `cocoon.core.bus.admin`; client settings and
why they are what they are in `cocoon.core.bus.settings`.
"""

from __future__ import annotations

from cocoon.core.bus.consumer import BusConsumer, ConsumerStats, Handler, Message
from cocoon.core.bus.deadletter import REASON_HEADER, SOURCE_HEADER, RejectRecord
from cocoon.core.bus.producer import BusProducer
from cocoon.core.bus.settings import ConsumerSettings, ProducerSettings, topic_prefix

__all__ = [
    "REASON_HEADER",
    "SOURCE_HEADER",
    "BusConsumer",
    "BusProducer",
    "ConsumerSettings",
    "ConsumerStats",
    "Handler",
    "Message",
    "ProducerSettings",
    "RejectRecord",
    "topic_prefix",
]
