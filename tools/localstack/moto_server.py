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

moto's server finds the backend of every request under one lock, listing its package directory
(a `stat` of each of its ~200 modules) and matching the host against every service's URL
patterns: under load most of the server's time was requests waiting for that lock. Both answers
depend only on the host, so here they are computed once per host.

moto's DynamoDB checks a write's condition and then writes, while other server threads run: two
conditional writes to one item could both pass. DynamoDB applies each write atomically, so here
DynamoDB requests run one at a time.

moto's DynamoDB projects an item (a read's ProjectionExpression) by converting the whole item to
plain JSON once per projected attribute: a BatchGetItem of 100 device items projecting 9 of them
converted each item 9 times (under the demo's rollouts, BatchGetItem took 40% of the DynamoDB
process). Here the item is converted once per projection.

`/moto-api/data.json` serialises every service's state (a second of the server's time per
thousand Timestream records); `?service=<module>` (e.g. `timestreamwrite`) narrows it to one.

Same arguments as `moto_server`.
"""

import copy
import json
import os
import sys
import threading
import time

from moto.core.config import default_user_config

default_user_config["iot"] = {"use_valid_cert": True}

import moto.server as _server  # noqa: E402  (after the configuration it reads)
from botocore.utils import merge_dicts  # noqa: E402
from moto import backends  # noqa: E402
from moto.dynamodb.models import dynamo_type  # noqa: E402
from moto.dynamodb.models.utilities import find_nested_key  # noqa: E402
from moto.moto_api._internal.responses import MotoAPIResponse  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402
from moto.sqs.models import Queue  # noqa: E402
from moto.timestreamwrite.responses import TimestreamWriteResponse  # noqa: E402

_MODULES = frozenset(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _MODULES

_backend_for_host = DomainDispatcherApplication.get_backend_for_host
_backends_by_host = {}


def _cached_backend_for_host(self, host):
    """The backend serving `host`, found once per host (the caller holds the dispatcher's lock)."""
    if host not in _backends_by_host:
        _backends_by_host[host] = _backend_for_host(self, host)
    return _backends_by_host[host]


DomainDispatcherApplication.get_backend_for_host = _cached_backend_for_host


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


def _project(self, projection_expressions):
    """The item with only the attributes the projection names (moto's `Item.project`, with the
    item converted to plain JSON once rather than once per projected path)."""
    plain = self.to_regular_json()
    result = {}
    for path in projection_expressions:
        # A copy: what is merged into the result must not alias the converted item.
        merge_dicts(result, copy.deepcopy(find_nested_key(path, plain)))
    return dynamo_type.Item(
        hash_key=self.hash_key,
        range_key=self.range_key,
        attrs=dynamo_type.serializer.serialize(result)["M"],
    )


dynamo_type.Item.project = _project


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

_model_data = MotoAPIResponse.model_data


def _model_data_of(self, request, full_url, headers):
    """`/moto-api/data.json`, or with `?service=NAME` that one service's models alone."""
    from urllib.parse import parse_qs, urlparse

    from moto.core.model_instances import model_data

    wanted = parse_qs(urlparse(full_url).query).get("service")
    if not wanted:
        return _model_data(self, request, full_url, headers)
    results = {}
    for service in wanted:
        results[service] = {}
        for name, model in sorted(model_data.get(service, {}).items()):
            results[service][name] = [_attributes(i) for i in model.instances_tracked]
    return 200, {"Content-Type": "application/javascript"}, json.dumps(results)


def _attributes(instance):
    """`instance`'s public attributes that JSON can hold, each read once."""
    kept = {}
    for attr in dir(instance):
        if attr.startswith("_"):
            continue
        try:
            value = getattr(instance, attr)
            json.dumps(value)
        except (AttributeError, TypeError, ValueError):
            continue
        kept[attr] = value
    return kept


MotoAPIResponse.model_data = _model_data_of

# DynamoDB requests one at a time (seen: a device's older shadow document overwrote the facts
# of a newer one, both conditional on the version). They are pure Python: the interpreter's lock
# ran them one at a time already, interleaved.
_dynamodb = threading.Lock()

# `SHOAL_MOTO_PROFILE=<file>` appends a line per request: start (s), wall and CPU time of its
# thread (s), and its operation (X-Amz-Target, or method and path).
_profile = os.environ.get("SHOAL_MOTO_PROFILE")
_profile_out = open(_profile, "a", buffering=1) if _profile else None
_profile_lock = threading.Lock()


def _served(app):
    def serve(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        began, cpu = time.monotonic(), time.thread_time()
        try:
            if target.startswith("DynamoDB_"):
                with _dynamodb:
                    return app(environ, start_response)
            return app(environ, start_response)
        finally:
            if _profile_out:
                operation = target or "%s %s" % (
                    environ.get("REQUEST_METHOD", ""),
                    environ.get("PATH_INFO", "")[:60],
                )
                with _profile_lock:
                    _profile_out.write(
                        "%.3f %.4f %.4f %s\n"
                        % (began, time.monotonic() - began, time.thread_time() - cpu, operation)
                    )

    return serve


_run_simple = _server.run_simple
_server.run_simple = lambda host, port, app, **kw: _run_simple(host, port, _served(app), **kw)

if __name__ == "__main__":
    sys.exit(_server.main())
