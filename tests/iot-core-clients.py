#!/usr/bin/env python3
"""The local IoT Core with a second MQTT implementation: paho-mqtt (MQTT 3.1.1 and 5) over TLS
with client certificates, and boto3's iot-data client on the core's HTTP data plane.

The Rust tests (tests/tests/iot_core*.rs) drive the core with rumqttc; this checks that another
client library, the one many Python device programs use, sees the same service: shadows answered
on their reserved topics and a cloud change arriving as delta, MQTT 3.1.1 and 5 clients talking to
each other, lifecycle events, a policy denial reported with MQTT 5's reason code, and fleet
provisioning by claim through the template's hook.

Run by `make test` (target iot-core-clients) with the local stack up; reads the endpoints
`tools/localstack/stack env` prints, else the stack's defaults. Exits 1 when a check fails.
"""

import json
import os
import queue
import ssl
import sys
import tempfile
import time
import uuid

import boto3
import paho.mqtt.client as mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AWS = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
DATA = os.environ.get("AWS_ENDPOINT_URL_IOT_DATA_PLANE", "http://127.0.0.1:8880")
HOST, PORT = os.environ.get("SHOAL_IOT_ENDPOINT", "127.0.0.1:8883").rsplit(":", 1)
CA = os.environ.get("SHOAL_IOT_CA_FILE", os.path.join(ROOT, ".local/iot-core/ca.pem"))
KW = dict(
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
)
IOT = boto3.client("iot", endpoint_url=AWS, **KW)
IOT_DATA = boto3.client("iot-data", endpoint_url=DATA, **KW)
WAIT_S = 10
WORK = tempfile.mkdtemp(prefix="shoal-paho-")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def certificate(policy):
    """A registered ACTIVE certificate with `policy` (a policy document) attached: (cert, key) files."""
    made = IOT.create_keys_and_certificate(setAsActive=True)
    name = unique("paho-policy")
    IOT.create_policy(policyName=name, policyDocument=json.dumps(policy))
    IOT.attach_policy(policyName=name, target=made["certificateArn"])
    cert = os.path.join(WORK, made["certificateId"] + ".pem")
    key = os.path.join(WORK, made["certificateId"] + ".key")
    with open(cert, "w") as f:
        f.write(made["certificatePem"])
    with open(key, "w") as f:
        f.write(made["keyPair"]["PrivateKey"])
    return cert, key


ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}


class Client:
    """A paho client whose received messages (topic, payload) and PUBACK reasons queue up."""

    def __init__(self, client_id, files, version=mqtt.MQTTv5):
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.subscribed = queue.Queue()
        self.version = version
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
        )
        self.client.tls_set(ca_certs=CA, certfile=files[0], keyfile=files[1], tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_publish = lambda c, u, mid, reason, props: self.acks.put((mid, reason))
        self.client.on_subscribe = lambda c, u, mid, reasons, props: self.subscribed.put(reasons)
        connected = queue.Queue()
        self.client.on_connect = lambda c, u, flags, reason, props: connected.put(reason)
        self.client.connect("localhost" if HOST in ("127.0.0.1", "localhost") else HOST, int(PORT), keepalive=60)
        self.client.loop_start()
        reason = connected.get(timeout=WAIT_S)
        assert not reason.is_failure, f"{client_id}: CONNACK {reason}"

    def subscribe(self, topic):
        self.client.subscribe(topic, qos=1)
        reasons = self.subscribed.get(timeout=WAIT_S)
        assert all(not r.is_failure for r in reasons), f"SUBACK {reasons}"

    def publish(self, topic, payload):
        info = self.client.publish(topic, payload, qos=1)
        return info.mid

    def next_on(self, topic):
        """The next message on `topic` (others are skipped), its payload read as JSON."""
        deadline = time.monotonic() + WAIT_S
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no message on {topic} within {WAIT_S} s"
            got, payload = self.messages.get(timeout=left)
            if got == topic:
                return json.loads(payload)

    def ack(self, mid):
        deadline = time.monotonic() + WAIT_S
        while True:
            got, reason = self.acks.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == mid:
                return reason

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def shadows_answer_both_versions_and_a_cloud_change_arrives_as_delta():
    thing = unique("paho")
    files = certificate(ALLOW_ALL)
    shadow = f"$aws/things/{thing}/shadow"
    device5 = Client(thing, files)
    device311 = Client(thing + "-311", files, mqtt.MQTTv311)
    try:
        device5.subscribe(f"{shadow}/#")
        IOT_DATA.update_thing_shadow(thingName=thing, payload=json.dumps({"state": {"desired": {"led": "on"}}}))
        delta = device5.next_on(f"{shadow}/update/delta")
        assert delta["state"] == {"led": "on"}, delta
        assert delta["version"] == 1, delta
        # An MQTT 3.1.1 client reports; the MQTT 5 client sees the answer with its token.
        device311.publish(f"{shadow}/update", json.dumps({"state": {"reported": {"led": "on"}}, "clientToken": "p-1"}))
        accepted = device5.next_on(f"{shadow}/update/accepted")
        assert accepted["clientToken"] == "p-1" and accepted["version"] == 2, accepted
        read = json.loads(IOT_DATA.get_thing_shadow(thingName=thing)["payload"].read())
        assert "delta" not in read["state"], read
        assert read["state"]["reported"] == {"led": "on"}, read
        # Plain topics between the two versions, both ways.
        device311.subscribe(f"lab/{thing}/#")
        device5.publish(f"lab/{thing}/from5", b'{"n": 5}')
        assert device311.next_on(f"lab/{thing}/from5") == {"n": 5}
    finally:
        device5.close()
        device311.close()


def connections_publish_lifecycle_events():
    files = certificate(ALLOW_ALL)
    watcher = Client(unique("paho-watch"), files)
    device_id = unique("paho-life")
    try:
        watcher.subscribe(f"$aws/events/presence/+/{device_id}")
        device = Client(device_id, files, mqtt.MQTTv311)
        connected = watcher.next_on(f"$aws/events/presence/connected/{device_id}")
        assert connected["clientId"] == device_id and connected["eventType"] == "connected", connected
        device.close()
        disconnected = watcher.next_on(f"$aws/events/presence/disconnected/{device_id}")
        assert disconnected["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT", disconnected
        assert disconnected["versionNumber"] == connected["versionNumber"], (connected, disconnected)
    finally:
        watcher.close()


def a_publish_the_policy_denies_gets_reason_0x87():
    client_id = unique("paho-pol")
    arn = "arn:aws:iot:us-east-1:123456789012"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{client_id}"},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{arn}:topic/own/{client_id}/*"},
        ],
    }
    device = Client(client_id, certificate(policy))
    try:
        allowed = device.ack(device.publish(f"own/{client_id}/x", b"{}"))
        assert not allowed.is_failure, allowed
        denied = device.ack(device.publish(f"other/{client_id}/x", b"{}"))
        assert denied.value == 0x87, denied
    finally:
        device.close()


def provisioning_by_claim_makes_a_device_of_a_manifest_serial():
    """Fleet provisioning by claim as a paho device program does it: the claim certificate (the
    template's claim policy) asks for keys and a certificate, then RegisterThing with its serial;
    the template's hook (in the local Lambda host) allows a manifest serial and refuses another."""
    serial = unique("SN-paho")
    csv = os.path.join(WORK, serial + ".csv")
    with open(csv, "w") as f:
        f.write(f"serial,model,batch,thing_group,attributes\n{serial},th-v2,2026-12,,hardware=rev-b\n")
    import subprocess
    subprocess.run([os.path.join(ROOT, "target/debug/shoal"), "manifest", "import", csv,
                    "--table", "shoal-local-manifest"], check=True, capture_output=True)
    claim = IOT.create_keys_and_certificate(setAsActive=True)
    IOT.attach_policy(policyName="shoal-local-claim", target=claim["certificateArn"])
    files = (os.path.join(WORK, "claim.pem"), os.path.join(WORK, "claim.key"))
    for path, text in zip(files, (claim["certificatePem"], claim["keyPair"]["PrivateKey"])):
        with open(path, "w") as f:
            f.write(text)
    provision = "$aws/provisioning-templates/shoal-fleet/provision/json"
    for version in (mqtt.MQTTv5, mqtt.MQTTv311):
        device = Client(f"claim.{uuid.uuid4().hex}", files, version)
        try:
            for topic in ("$aws/certificates/create/json/accepted", f"{provision}/accepted", f"{provision}/rejected"):
                device.subscribe(topic)
            device.publish("$aws/certificates/create/json", b"{}")
            created = device.next_on("$aws/certificates/create/json/accepted")
            wanted = serial if version == mqtt.MQTTv5 else unique("SN-unknown")
            device.publish(provision, json.dumps({
                "certificateOwnershipToken": created["certificateOwnershipToken"],
                "parameters": {"SerialNumber": wanted},
            }))
            if version == mqtt.MQTTv5:
                answer = device.next_on(f"{provision}/accepted")
                assert answer == {"deviceConfiguration": {}, "thingName": serial}, answer
                described = IOT.describe_certificate(certificateId=created["certificateId"])
                assert described["certificateDescription"]["status"] == "ACTIVE", described
                thing = IOT.describe_thing(thingName=serial)
                assert thing["attributes"].get("hardware") == "rev-b", thing
            else:
                refused = device.next_on(f"{provision}/rejected")
                assert refused["statusCode"] == 403, refused
        finally:
            device.close()


CHECKS = [
    shadows_answer_both_versions_and_a_cloud_change_arrives_as_delta,
    connections_publish_lifecycle_events,
    a_publish_the_policy_denies_gets_reason_0x87,
    provisioning_by_claim_makes_a_device_of_a_manifest_serial,
]


def main():
    failed = 0
    for check in CHECKS:
        try:
            check()
            print(f"ok   {check.__name__}")
        except Exception as e:  # a failed assertion or a timeout: report it, run the rest
            failed += 1
            print(f"FAIL {check.__name__}: {type(e).__name__}: {e}")
    print(f"iot-core-clients: {len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
