#!/usr/bin/env bash
# Runs the built functions the way Lambda does: `cargo lambda watch` emulates the Lambda runtime
# API on 127.0.0.1, and `cargo lambda invoke` sends every events/<function>-*.json to it. The
# local stack must be up (make test runs this inside `tools/localstack/stack run`). Sample times
# are shifted to now first (events/README.md). Direct events must account for each reading
# (received = accepted + quarantined + retried; the clean files fully accepted); SQS and Kinesis
# batches must report no batch item failures; the pre-provisioning hook must allow exactly the
# `-allowed` sample; shadow documents and presence samples must have their documented outcome.
# tests/tests/events.rs checks the exact outcomes.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv="$root/.venv"
py="$venv/bin/python"
port="${SHOAL_INVOKE_PORT:-9123}"
work=$(mktemp -d)
suffix=$(date +%s%N | tail -c 9)
database="invoke_${suffix}"
bucket="invoke-archive-${suffix}"
manifest="invoke-manifest-${suffix}"
devices="invoke-devices-${suffix}"
firmware="invoke-firmware-${suffix}"
rollouts="invoke-rollouts-${suffix}"
model="invoke-m-${suffix}"
watch_pids=()
cleanup() {
  for pid in "${watch_pids[@]}"; do
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Resources the function writes to (never boto3 here: its Timestream client insists on endpoint
# discovery and would call AWS's real host).
cargo run --quiet -p shoal-cli -- init-local --database "$database" --table telemetry \
  --bucket "$bucket" --manifest-table "$manifest" --device-table "$devices" \
  --firmware-table "$firmware" --firmware-bucket "$firmware" --rollout-table "$rollouts"
cargo run --quiet -p shoal-cli -- manifest import tests/fixtures/manifest.csv --table "$manifest"

log="$work/watch.log"
# An env file, not --env-var: cargo-lambda splits --env-var values at commas.
cat >"$work/function.env" <<ENV
SHOAL_TIMESTREAM_DATABASE="$database"
SHOAL_TIMESTREAM_TABLE="telemetry"
SHOAL_ARCHIVE_BUCKET="$bucket"
SHOAL_PACKED_SCHEMAS="th-v2=temp,hum"
SHOAL_MANIFEST_TABLE="$manifest"
SHOAL_TEMPLATE_MODELS="shoal-fleet=th-v2"
SHOAL_DEVICE_TABLE="$devices"
SHOAL_FIRMWARE_TABLE="$firmware"
SHOAL_FIRMWARE_BUCKET="$firmware"
SHOAL_ROLLOUT_TABLE="$rollouts"
AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL"
AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
AWS_REGION="$AWS_REGION"
ENV
# watch PACKAGE PORT: the package's functions under the Lambda emulator, with a bounded wait
# until it accepts connections.
watch() {
  local package=$1 at=$2 log="$work/watch-$1.log" pid
  setsid cargo lambda watch --quiet -A 127.0.0.1 -P "$at" -p "$package" \
    --env-file "$work/function.env" >"$log" 2>&1 &
  pid=$!
  watch_pids+=("$pid")
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$at") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; echo "cargo lambda watch -p $package exited" >&2; exit 1; fi
    sleep 0.2
  done
  echo "cargo lambda watch -p $package did not listen on $at" >&2
  exit 1
}
watch telemetry-router "$port"
watch provisioning "$((port + 1))"
watch shadow-sync "$((port + 2))"
watch ota-scheduler "$((port + 3))"

failures=0
checked=0
for event in events/telemetry-router-*.json; do
  shifted="$work/$(basename "$event")"
  "$py" - "$event" "$shifted" <<'PY'
import base64, json, struct, sys, time
SAMPLE = 1795600000000
now = int(time.time() * 1000)
def shift(v):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k in ("ts", "_received_at") and isinstance(x, int):
                out[k] = x - SAMPLE + now
            elif k == "_payload" and str(v.get("_topic", "")).endswith("/th-v2"):
                raw = bytearray(base64.b64decode(x))
                for at in range(0, len(raw), 16):  # packed th-v2: u64 ms + 2 x f32, big-endian
                    (t,) = struct.unpack_from(">q", raw, at)
                    struct.pack_into(">q", raw, at, t - SAMPLE + now)
                out[k] = base64.b64encode(bytes(raw)).decode()
            elif k == "body" and isinstance(x, str):
                try:
                    out[k] = json.dumps(shift(json.loads(x)))
                except ValueError:
                    out[k] = x
            elif k == "data" and isinstance(x, str):
                out[k] = base64.b64encode(json.dumps(shift(json.loads(base64.b64decode(x)))).encode()).decode()
            else:
                out[k] = shift(x)
        return out
    if isinstance(v, list):
        return [shift(x) for x in v]
    return v
json.dump(shift(json.load(open(sys.argv[1]))), open(sys.argv[2], "w"))
PY
  # The first invocation compiles the function: allow it time.
  if ! response=$(cargo lambda invoke telemetry-router -A 127.0.0.1 -P "$port" --data-file "$shifted" 2>"$work/invoke.err"); then
    echo "FAIL $event: invoke failed: $(cat "$work/invoke.err")" >&2
    failures=$((failures + 1)); continue
  fi
  if "$py" - "$event" "$response" <<'PY'
import json, sys
name, response = sys.argv[1], json.loads(sys.argv[2])
if "batchItemFailures" in response:
    # SQS / Kinesis: every message of the samples can be stored or quarantined; none is retried.
    assert response["batchItemFailures"] == [], response
else:
    quarantined = sum(response["quarantined"].values())
    assert response["received"] == response["accepted"] + quarantined + response["retried"], response
    clean = ("json-single" in name) or ("json-batch" in name) or ("gzip-members" in name)
    assert not clean or (response["accepted"] == response["received"] > 0), response
print(f"ok   {name}: {response}")
PY
  then checked=$((checked + 1)); else failures=$((failures + 1)); fi
done

for event in events/pre-provisioning-hook-*.json; do
  if ! response=$(cargo lambda invoke pre-provisioning-hook -A 127.0.0.1 -P "$((port + 1))" --data-file "$event" 2>"$work/invoke.err"); then
    echo "FAIL $event: invoke failed: $(cat "$work/invoke.err")" >&2
    failures=$((failures + 1)); continue
  fi
  if "$py" - "$event" "$response" <<'PY'
import json, sys
name, response = sys.argv[1], json.loads(sys.argv[2])
assert response["allowProvisioning"] == name.endswith("/pre-provisioning-hook-allowed.json"), response
print(f"ok   {name}: {response}")
PY
  then checked=$((checked + 1)); else failures=$((failures + 1)); fi
done

# invoke BINARY PORT FILE CHECK: invokes, then runs the Python CHECK with `name` and `response`.
invoke() {
  local binary=$1 at=$2 file=$3 check=$4 response
  if ! response=$(cargo lambda invoke "$binary" -A 127.0.0.1 -P "$at" --data-file "$file" 2>"$work/invoke.err"); then
    echo "FAIL $file: invoke failed: $(cat "$work/invoke.err")" >&2
    failures=$((failures + 1)); return
  fi
  if "$py" -c "import json, sys
name, response = sys.argv[1], json.loads(sys.argv[2])
$check
print(f'ok   {name}: {response}')" "$file" "$response"; then
    checked=$((checked + 1)); else failures=$((failures + 1)); fi
}

# invoke_error BINARY PORT FILE ERROR_TYPE: the invocation must fail with that Lambda errorType
# (Retryable or NonRetryable: shoal_aws::lambda).
invoke_error() {
  local binary=$1 at=$2 file=$3 expected=$4
  if cargo lambda invoke "$binary" -A 127.0.0.1 -P "$at" --data-file "$file" >"$work/invoke.out" 2>"$work/invoke.err"; then
    echo "FAIL $file: expected a $expected error, got $(cat "$work/invoke.out")" >&2
    failures=$((failures + 1)); return
  fi
  if grep -qw "$expected" "$work/invoke.err" "$work/invoke.out"; then
    echo "ok   $file: $expected: $(tr '\n' ' ' <"$work/invoke.err" | cut -c1-200)"
    checked=$((checked + 1))
  else
    echo "FAIL $file: expected errorType $expected: $(cat "$work/invoke.err" "$work/invoke.out")" >&2
    failures=$((failures + 1))
  fi
}

# Shadow documents: a fresh thing whose shadow reaches the sample's versions with the same
# updates (boto3's IoT clients are fine here; only its Timestream client misbehaves).
thing="invoke-thing-${suffix}"
for event in events/shadow-documents-*.json; do
  "$py" - "$event" "$work/$(basename "$event")" "$thing" <<'PY'
import json, os, sys
import boto3
source, target, thing = sys.argv[1:4]
event = json.load(open(source))
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
iot, data = boto3.client("iot", **kw), boto3.client("iot-data", **kw)
named = "/shadow/name/" in event["topic"]
if not named:
    iot.create_thing(thingName=thing)
    for section in ("desired", "reported"):
        data.update_thing_shadow(thingName=thing, payload=json.dumps({"state": {section: event["current"]["state"][section]}}))
event["topic"] = event["topic"].replace("shoal-sample-1", thing)
json.dump(event, open(target, "w"))
PY
done
invoke shadow-documents "$((port + 2))" "$work/shadow-documents-classic.json" \
  'assert response["converged"] == ["sample_interval_s"] and response["written_version"] == 3 and response["facts"] == "recorded", response'
invoke shadow-documents "$((port + 2))" "$work/shadow-documents-ota.json" \
  'assert response["ota"] == "recorded" and response["written_version"] is None, response'

# Presence (SN-EVT-0001's certificate was recorded by the hook's `-allowed` sample above): connect
# then disconnect apply, another certificate's connect is ignored; the sweep accounts for every
# device it found.
invoke presence "$((port + 2))" events/presence-connected.json 'assert response["outcome"] == "applied", response'
invoke presence "$((port + 2))" events/presence-connected-foreign-principal.json \
  'assert response["outcome"] == "ignored" and response["ignored_because"] == "foreign_principal", response'
invoke presence "$((port + 2))" events/presence-disconnected.json 'assert response["outcome"] == "applied", response'
invoke presence "$((port + 2))" events/presence-disconnected.json 'assert response["outcome"] == "stale", response'
invoke presence "$((port + 2))" events/presence-offline-sweep.json \
  'assert response["failed"] == 0 and response["offline_past_threshold"] == response["alerted"] + response["returned_meanwhile"], response'

# OTA: two signed images, three things of this run's model (registry attributes, device table
# presence and firmware), a rollout whose canary takes nearly everyone; the scheduled run targets.
for version in 1.9.0 1.10.0; do
  printf 'shoal invoke image %s\n' "$version" >"$work/fw-$version.bin"
  cargo run --quiet -p shoal-cli -- firmware publish "$work/fw-$version.bin" --model "$model" \
    --hardware rev-b --version "$version" --table "$firmware" --bucket "$firmware" \
    --key alias/shoal-local-firmware-signing >/dev/null
done
"$py" - "$model" "$devices" <<'PY'
import os, sys
import boto3
model, devices = sys.argv[1:3]
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
iot = boto3.client("iot", **kw)
# The stack serves DynamoDB from its own moto process.
ddb = boto3.client("dynamodb", **dict(kw, endpoint_url=os.environ.get(
    "AWS_ENDPOINT_URL_DYNAMODB", kw["endpoint_url"])))
for i in range(3):
    thing = f"{model}-{i}"
    iot.create_thing(thingName=thing, attributePayload={"attributes": {"model": model, "hardware": "rev-b"}})
    ddb.put_item(TableName=devices, Item={"thing_name": {"S": thing}, "record": {"S": "device"},
                 "online": {"BOOL": True}, "firmware_version": {"S": "1.9.0"}})
PY
cargo run --quiet -p shoal-cli -- rollout start --model "$model" --hardware rev-b --version 1.10.0 \
  --canary-percent 99.9 --staged 99.95 --id "invoke-${suffix}" \
  --table "$rollouts" --firmware-table "$firmware" >/dev/null
invoke ota-advancer "$((port + 3))" events/ota-advancer-schedule.json \
  'runs = response["rollouts"]; assert len(runs) == 1 and runs[0].get("error") is None and runs[0]["targeted"] >= 1 and runs[0]["delivery_failures"] == 0, response'

# A rollout that does not exist stays missing: the run fails, and says a retry cannot help.
printf '{"rollout": "invoke-missing-%s"}\n' "$suffix" >"$work/ota-advancer-missing.json"
invoke_error ota-advancer "$((port + 3))" "$work/ota-advancer-missing.json" NonRetryable

echo "lambda-invoke: $checked passed, $failures failed"
[ "$failures" -eq 0 ] && [ "$checked" -gt 0 ]
