"""moto's standalone server, naming certificates as AWS IoT does.

moto computes a certificate's id as the SHA-256 of its PEM text unless its IoT configuration sets
`use_valid_cert`, and its `/moto-api/config` endpoint does not take IoT settings; AWS IoT (and the
local IoT Core, which sees only the DER in the TLS handshake) uses the SHA-256 of the DER.

moto's Timestream WriteRecords stores the request's `Records` and drops its `CommonAttributes`, so
the state read back (`/moto-api/data.json`) loses whatever a writer hoisted there (the telemetry
router hoists the dimensions a batch shares). Here each record is stored as Timestream reads it:
the common attributes with the record's own values over them, and the dimensions of both.

moto's SQS computes every queue attribute, counting its messages three times over, on each
SendMessage (to read one flag): a queue with a backlog makes every send slower, which makes the
backlog grow. AWS documents the approximate counts as approximate (eventually consistent), so here
each is computed at most once a second per queue.

Same arguments as `moto_server`.
"""

import json
import sys
import time

from moto.core.config import default_user_config

default_user_config["iot"] = {"use_valid_cert": True}

from moto.server import main  # noqa: E402  (after the configuration it reads)
from moto.sqs.models import Queue  # noqa: E402
from moto.timestreamwrite.responses import TimestreamWriteResponse  # noqa: E402


def _as_written(common, record):
    """`record` with the write's common attributes under it (Timestream's WriteRecords rules)."""
    merged = dict(common)
    merged.update(record)
    dimensions = list(common.get("Dimensions") or []) + list(record.get("Dimensions") or [])
    if dimensions:
        merged["Dimensions"] = dimensions
    return merged


def _write_records(self):
    common = self._get_param("CommonAttributes") or {}
    records = [_as_written(common, r) for r in self._get_param("Records") or []]
    self.timestreamwrite_backend.write_records(
        self._get_param("DatabaseName"), self._get_param("TableName"), records
    )
    ingested = {"Total": len(records), "MemoryStore": len(records), "MagneticStore": 0}
    return json.dumps({"RecordsIngested": ingested})


TimestreamWriteResponse.write_records = _write_records


def _once_a_second(name, count):
    def cached(queue):
        now = time.monotonic()
        kept = queue.__dict__.setdefault("_approximate_counts", {})
        hit = kept.get(name)
        if hit is None or now - hit[0] >= 1.0:
            hit = (now, count(queue))
            kept[name] = hit
        return hit[1]

    return property(cached)


for _name in (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
):
    setattr(Queue, _name, _once_a_second(_name, getattr(Queue, _name).fget))

if __name__ == "__main__":
    sys.exit(main())
