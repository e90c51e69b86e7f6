#!/usr/bin/python3
"""Self-test of tests/lib/fake_kube.py's events.k8s.io/v1 Events and RBAC: what it answers on the
wire (statuses, Status bodies, validation causes as the apiserver words them), on 127.0.0.1 only.

    /usr/bin/python3 -m unittest -v tests/lib/test_fake_kube_events.py
"""

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_kube import FakeKube, deployment_pod  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOKEN = "t0ken"
USER = "system:serviceaccount:rstwatch:rstwatch"
NS = "shop"
EVENTS = "/apis/events.k8s.io/v1/namespaces/%s/events" % NS
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSONPATCH = "application/json-patch+json"
RULES = [{"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list", "watch"]},
         {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]


def event(name="web-7d4b9-x2x.17a1b2c3d4e5f6a7", **over):
    ev = {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": name, "namespace": NS},
        "eventTime": "2026-01-02T03:04:05.123456Z",
        "reportingController": "rstwatch", "reportingInstance": "node-a",
        "action": "Observed", "reason": "StaleKeepaliveReset", "type": "Warning",
        "regarding": {"kind": "Pod", "namespace": NS, "name": "web-7d4b9-x2x", "uid": "u-1", "apiVersion": "v1"},
        "note": "idle_close_race: shop/web -> shop/db:5432",
    }
    for k, v in over.items():
        if v is None:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


class FakeKubeEventsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.kube = FakeKube(token=TOKEN)   # one server (stopping one takes up to 0.5 s)
        cls.kube.start()

    @classmethod
    def tearDownClass(cls):
        cls.kube.stop()

    def setUp(self):
        self.kube.reset()
        self.kube.set_rbac(None)

    def request(self, method, path, body=None, ctype="application/json", token=TOKEN):
        conn = http.client.HTTPConnection("127.0.0.1", self.kube.port, timeout=10)
        headers = {"Authorization": "Bearer " + token} if token else {}
        if body is not None:
            headers["Content-Type"] = ctype
            body = body if isinstance(body, (bytes, str)) else json.dumps(body)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, json.loads(data) if data.strip() else None, resp

    def create(self, ev=None, **kw):
        return self.request("POST", EVENTS, ev if ev is not None else event(), **kw)

    def patch(self, name, patch, ctype=MERGE):
        return self.request("PATCH", "%s/%s" % (EVENTS, name), patch, ctype)

    def assertInvalid(self, status, body, name, causes):
        """422 Invalid whose causes are exactly [(field, message)]."""
        self.assertEqual(status, 422, body)
        self.assertEqual((body["kind"], body["status"], body["reason"], body["code"]),
                         ("Status", "Failure", "Invalid", 422))
        self.assertEqual(body["details"].get("name", ""), name)
        self.assertEqual(body["details"]["kind"], "Event")
        self.assertEqual([(c.get("field"), c["message"]) for c in body["details"]["causes"]], causes, body)
        msgs = []
        for field, message in causes:
            if "%s: %s" % (field, message) not in msgs:
                msgs.append("%s: %s" % (field, message))
        agg = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
        self.assertEqual(body["message"], 'Event "%s" is invalid: %s' % (name, agg))

    # -- create --

    def test_create_stores_the_event_as_the_api_serves_it(self):
        status, body, resp = self.create()
        self.assertEqual(status, 201, body)
        self.assertEqual(resp.getheader("Content-Type"), "application/json")
        self.assertEqual(list(body)[:4], ["kind", "apiVersion", "metadata", "eventTime"])
        self.assertEqual((body["kind"], body["apiVersion"]), ("Event", "events.k8s.io/v1"))
        meta = body["metadata"]
        self.assertEqual(meta["name"], "web-7d4b9-x2x.17a1b2c3d4e5f6a7")
        self.assertEqual(meta["namespace"], NS)
        self.assertRegex(meta["uid"], r"^[0-9a-f-]{36}$")
        self.assertRegex(meta["resourceVersion"], r"^\d+$")
        self.assertRegex(meta["creationTimestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(body["eventTime"], "2026-01-02T03:04:05.123456Z")
        # Go's omitempty: struct fields stay ({}), unset timestamps are null, a 0 count is left out.
        self.assertEqual(body["deprecatedSource"], {})
        self.assertIsNone(body["deprecatedFirstTimestamp"])
        self.assertIsNone(body["deprecatedLastTimestamp"])
        self.assertNotIn("deprecatedCount", body)
        self.assertNotIn("series", body)
        self.assertEqual(self.kube.events(), [body])
        self.assertEqual(self.kube.events("other"), [])

    def test_event_time_is_normalized_to_utc_microseconds(self):
        status, body, _ = self.create(event(eventTime="2026-01-02T05:04:05.000001+02:00"))
        self.assertEqual(status, 201, body)
        self.assertEqual(body["eventTime"], "2026-01-02T03:04:05.000001Z")

    def test_event_time_needs_six_fractional_digits(self):
        status, body, _ = self.create(event(eventTime="2026-01-02T03:04:05Z"))
        self.assertEqual(status, 400, body)
        self.assertEqual(body["reason"], "BadRequest")
        self.assertEqual(body["message"], 'Event in version "v1" cannot be handled as a Event: parsing time '
                         '"2026-01-02T03:04:05Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000"')

    def test_generate_name(self):
        ev = event()
        ev["metadata"] = {"generateName": "web-"}
        status, body, _ = self.create(ev)
        self.assertEqual(status, 201, body)
        self.assertRegex(body["metadata"]["name"], r"^web-[bcdfghjklmnpqrstvwxz2456789]{5}$")
        self.assertEqual(body["metadata"]["generateName"], "web-")
        self.assertEqual(body["metadata"]["namespace"], NS)

    def test_create_twice_is_409_already_exists(self):
        self.assertEqual(self.create()[0], 201)
        status, body, _ = self.create()
        self.assertEqual(status, 409)
        self.assertEqual(body, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'events.events.k8s.io "web-7d4b9-x2x.17a1b2c3d4e5f6a7" already exists',
            "reason": "AlreadyExists",
            "details": {"name": "web-7d4b9-x2x.17a1b2c3d4e5f6a7", "group": "events.k8s.io", "kind": "events"},
            "code": 409})

    def test_body_namespace_must_match_the_url(self):
        ev = event()
        ev["metadata"]["namespace"] = "other"
        status, body, _ = self.create(ev)
        self.assertEqual(status, 400)
        self.assertEqual((body["reason"], body["message"]), (
            "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"))
        ev["metadata"].pop("namespace")
        status, body, _ = self.create(ev)
        self.assertEqual(status, 201, body)
        self.assertEqual(body["metadata"]["namespace"], NS)

    def test_kind_and_api_version_are_checked(self):
        status, body, _ = self.create(event(apiVersion="v1"))
        self.assertEqual(status, 400)
        self.assertEqual(body["message"], "the API version in the data (v1) does not match the expected API "
                                          "version (events.k8s.io/v1)")
        status, body, _ = self.create(event(kind="Pod"))
        self.assertEqual(status, 400)
        self.assertTrue(body["message"].startswith('Pod in version "v1" cannot be handled as a Event: no kind "Pod"'),
                        body)
        # Left out, both default to the endpoint's.
        status, body, _ = self.create(event(apiVersion=None, kind=None))
        self.assertEqual(status, 201, body)

    def test_wrong_types_and_unknown_fields(self):
        status, body, _ = self.create(event(series={"count": "2", "lastObservedTime": "2026-01-02T03:04:06.000000Z"}))
        self.assertEqual(status, 400)
        self.assertEqual(body["message"], 'Event in version "v1" cannot be handled as a Event: json: cannot unmarshal '
                                          'string into Go struct field EventSeries.series.count of type int32')
        status, body, resp = self.create(event(spec={"x": 1}))
        self.assertEqual(status, 201, body)
        self.assertEqual(resp.getheader("Warning"), '299 - "unknown field \\"spec\\""')
        self.assertNotIn("spec", body)

    def test_create_needs_json(self):
        status, body, _ = self.create(ctype="text/plain")
        self.assertEqual(status, 415)
        self.assertEqual(body["message"], "the body of the request was in an unknown format - accepted media types "
                                          "include: application/json, application/yaml, "
                                          "application/vnd.kubernetes.protobuf")

    # -- validation, rule by rule (pkg/apis/core/validation/events.go) --

    def invalid_create(self, ev, causes, name="web-7d4b9-x2x.17a1b2c3d4e5f6a7"):
        status, body, _ = self.create(ev)
        self.assertInvalid(status, body, name, causes)
        self.assertEqual(self.kube.events(), [])

    def test_event_time_is_required(self):
        # Without eventTime the legacy branch applies: the reporting fields are not looked at.
        self.invalid_create(event(eventTime=None, reportingController=None), [("eventTime", "Required value")])

    def test_reporting_controller(self):
        self.invalid_create(event(reportingController=None), [
            ("reportingController", "Required value"),
            ("reportingController", "Invalid value: \"\": name part must be non-empty"),
            ("reportingController", "Invalid value: \"\": name part must consist of alphanumeric characters, '-', "
             "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
             "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")])
        self.invalid_create(event(reportingController="rst watch"), [
            ("reportingController", "Invalid value: \"rst watch\": name part must consist of alphanumeric "
             "characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or "
             "'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")])
        self.assertEqual(self.create(event(reportingController="rstwatch.io/agent"))[0], 201)

    def test_reporting_instance_action_reason_required_and_at_most_128(self):
        for field in ("reportingInstance", "action", "reason"):
            with self.subTest(field=field):
                self.invalid_create(event(**{field: None}), [(field, "Required value")])
                self.invalid_create(event(**{field: "x" * 129}),
                                    [(field, 'Invalid value: "": can have at most 128 characters')])
                status, body, _ = self.create(event(name="ok-" + field.lower(), **{field: "x" * 128}))
                self.assertEqual(status, 201, body)
                self.kube.clear_events()

    def test_note_at_most_1024_bytes_reported_as_message(self):
        self.invalid_create(event(note="é" * 513), [("message", 'Invalid value: "": can have at most 1024 characters')])
        self.assertEqual(self.create(event(note="n" * 1024))[0], 201)

    def test_type_normal_or_warning(self):
        self.invalid_create(event(type="Error"), [("type", 'Invalid value: "": has invalid value: Error')])
        self.invalid_create(event(type=None), [("type", 'Invalid value: "": has invalid value: ')])
        self.assertEqual(self.create(event(type="Normal"))[0], 201)

    def test_series_count_at_least_2_and_last_observed_time(self):
        self.invalid_create(event(series={"count": 1}), [
            ("series.count", 'Invalid value: "": should be at least 2'),
            ("series.lastObservedTime", "Required value")])
        self.invalid_create(event(series={}), [
            ("series.count", 'Invalid value: "": should be at least 2'),
            ("series.lastObservedTime", "Required value")])
        status, body, _ = self.create(event(series={"count": 2, "lastObservedTime": "2026-01-02T03:04:06.000000Z"}))
        self.assertEqual(status, 201, body)
        self.assertEqual(body["series"], {"count": 2, "lastObservedTime": "2026-01-02T03:04:06.000000Z"})

    def test_regarding_namespace(self):
        # An event on a cluster-scoped object lives in default (or kube-system), not in NS.
        self.invalid_create(event(regarding={"kind": "Node", "name": "node-a"}), [
            ("involvedObject.namespace", 'Invalid value: "": does not match event.namespace')])
        # With eventTime set the apiserver does not compare two non-empty namespaces.
        self.assertEqual(self.create(event(regarding={"kind": "Pod", "namespace": "other", "name": "p"}))[0], 201)

    def test_deprecated_fields_must_be_unset(self):
        self.invalid_create(event(deprecatedCount=3, deprecatedSource={"component": "x"},
                                  deprecatedFirstTimestamp="2026-01-02T03:04:05Z"), [
            ("firstTimestamp", 'Invalid value: "": needs to be unset'),
            ("count", 'Invalid value: "": needs to be unset'),
            ("source", 'Invalid value: "": needs to be unset')])

    def test_metadata_name(self):
        self.invalid_create(event(name="Web_1"), [
            ("metadata.name", "Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain must consist of lower case "
             "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
             "'example.com', regex used for validation is "
             "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")], name="Web_1")
        ev = event()
        ev["metadata"] = {}
        self.invalid_create(ev, [("metadata.name", "Required value: name or generateName is required")], name="")

    def test_errors_accumulate_in_the_apiservers_order(self):
        self.invalid_create(event(action=None, reason=None, type="Bad"), [
            ("action", "Required value"), ("reason", "Required value"),
            ("type", 'Invalid value: "": has invalid value: Bad')])

    # -- patch --

    def created(self, **over):
        status, body, _ = self.create(event(**over))
        self.assertEqual(status, 201, body)
        return body

    def series_patch(self, count):
        return {"series": {"count": count, "lastObservedTime": "2026-01-02T03:05:00.000000Z"}}

    def test_merge_patch_advances_the_series(self):
        ev = self.created()
        status, body, _ = self.patch(ev["metadata"]["name"], self.series_patch(2))
        self.assertEqual(status, 200, body)
        self.assertEqual(body["series"], {"count": 2, "lastObservedTime": "2026-01-02T03:05:00.000000Z"})
        self.assertGreater(int(body["metadata"]["resourceVersion"]), int(ev["metadata"]["resourceVersion"]))
        self.assertEqual(body["metadata"]["uid"], ev["metadata"]["uid"])
        self.assertEqual(self.kube.events(), [body])
        # The same patch again changes nothing: 200, same resourceVersion.
        status, again, _ = self.patch(ev["metadata"]["name"], self.series_patch(2))
        self.assertEqual((status, again), (200, body))

    def test_strategic_merge_patch(self):
        ev = self.created()
        status, body, _ = self.patch(ev["metadata"]["name"], self.series_patch(3), STRATEGIC)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["series"]["count"], 3)
        status, body, _ = self.patch(ev["metadata"]["name"],
                                     {"metadata": {"labels": {"a": "b", "$patch": "replace"}}}, STRATEGIC)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["metadata"]["labels"], {"a": "b"})

    def test_json_patch_add_replace_test(self):
        ev = self.created()
        name = ev["metadata"]["name"]
        status, body, _ = self.patch(name, [{"op": "add", "path": "/series", "value": self.series_patch(2)["series"]}],
                                     JSONPATCH)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["series"]["count"], 2)
        status, body, _ = self.patch(name, [{"op": "test", "path": "/series/count", "value": 2},
                                            {"op": "replace", "path": "/series/count", "value": 5}], JSONPATCH)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["series"]["count"], 5)
        status, body, _ = self.patch(name, [{"op": "test", "path": "/series/count", "value": 2},
                                            {"op": "replace", "path": "/series/count", "value": 9}], JSONPATCH)
        self.assertEqual(status, 422, body)
        self.assertEqual(body["details"]["causes"], [{"reason": "UnexpectedServerResponse",
                                                      "message": "testing value /series/count failed: test failed"}])
        self.assertEqual(self.kube.event("shop", name)["series"]["count"], 5)

    def test_patch_of_a_missing_event_is_404(self):
        status, body, _ = self.patch("nope", self.series_patch(2))
        self.assertEqual(status, 404)
        self.assertEqual(body, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'events.events.k8s.io "nope" not found', "reason": "NotFound",
            "details": {"name": "nope", "group": "events.k8s.io", "kind": "events"}, "code": 404})

    def test_patch_content_types(self):
        ev = self.created()
        for ctype in ("application/json", "application/apply-patch+yaml", "text/plain"):
            with self.subTest(ctype=ctype):
                status, body, _ = self.patch(ev["metadata"]["name"], self.series_patch(2), ctype)
                self.assertEqual(status, 415)
                self.assertEqual((body["reason"], body["message"]), (
                    "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/strategic-merge-patch+json, application/apply-patch+yaml"))

    def test_patched_series_is_validated(self):
        ev = self.created()
        status, body, _ = self.patch(ev["metadata"]["name"], {"series": {"count": 1}})
        self.assertInvalid(status, body, ev["metadata"]["name"], [
            ("series.count", 'Invalid value: "": should be at least 2'),
            ("series.lastObservedTime", "Required value")])

    def test_immutable_fields(self):
        ev = self.created(related={"kind": "Pod", "namespace": NS, "name": "db-0"})
        name = ev["metadata"]["name"]
        cases = [
            ({"note": "changed"}, [("message", 'Invalid value: "changed": field is immutable')]),
            # ValidateEventUpdate checks reason twice: two causes, one message.
            ({"reason": "Other"}, [("reason", 'Invalid value: "Other": field is immutable'),
                                   ("reason", 'Invalid value: "Other": field is immutable')]),
            ({"type": "Normal"}, [("type", 'Invalid value: "Normal": field is immutable')]),
            ({"action": "Other"}, [("action", 'Invalid value: "Other": field is immutable')]),
            ({"reportingController": "other"}, [("reportingController", 'Invalid value: "other": field is immutable')]),
            ({"reportingInstance": "node-b"}, [("reportingInstance", 'Invalid value: "node-b": field is immutable')]),
            ({"eventTime": "2026-01-02T03:04:06.500000Z"},
             [("eventTime", "Invalid value: 2026-01-02 03:04:06.5 +0000 UTC: field is immutable")]),
            ({"regarding": {"name": "web-other"}},
             [("involvedObject", 'Invalid value: core.ObjectReference{Kind:"Pod", Namespace:"shop", '
               'Name:"web-other", UID:"u-1", APIVersion:"v1", ResourceVersion:"", FieldPath:""}: '
               'field is immutable')]),
            ({"related": None}, [("related", "Invalid value: null: field is immutable")]),
            ({"metadata": {"uid": "other-uid"}}, [("metadata.uid", 'Invalid value: "other-uid": field is immutable')]),
        ]
        for patch, causes in cases:
            with self.subTest(patch=patch):
                status, body, _ = self.patch(name, patch)
                self.assertInvalid(status, body, name, causes)
        self.assertEqual(self.kube.events(), [ev])
        # Labels, annotations and the series may change.
        status, body, _ = self.patch(name, {"metadata": {"labels": {"x": "y"}}, **self.series_patch(2)})
        self.assertEqual(status, 200, body)

    def test_patch_name_and_resource_version(self):
        ev = self.created()
        name = ev["metadata"]["name"]
        status, body, _ = self.patch(name, {"metadata": {"name": "other"}})
        self.assertEqual((status, body["reason"]), (400, "BadRequest"))
        self.assertEqual(body["message"], "the name of the object (other) does not match the name on the URL (%s)" % name)
        status, body, _ = self.patch(name, {"metadata": {"resourceVersion": "1"}, **self.series_patch(2)})
        self.assertEqual((status, body["reason"]), (409, "Conflict"), body)
        self.assertEqual(body["message"], 'Operation cannot be fulfilled on events.events.k8s.io "%s": the object has '
                         'been modified; please apply your changes to the latest version and try again' % name)
        status, body, _ = self.patch(name, {"metadata": {"resourceVersion": ev["metadata"]["resourceVersion"]},
                                            **self.series_patch(2)})
        self.assertEqual(status, 200, body)

    # -- reads --

    def test_get_and_lists(self):
        ev = self.created()
        status, body, _ = self.request("GET", "%s/%s" % (EVENTS, ev["metadata"]["name"]))
        self.assertEqual((status, body), (200, ev))
        status, body, _ = self.request("GET", EVENTS + "/nope")
        self.assertEqual((status, body["message"]), (404, 'events.events.k8s.io "nope" not found'))
        for path in (EVENTS, "/apis/events.k8s.io/v1/events"):
            status, body, _ = self.request("GET", path)
            self.assertEqual(status, 200)
            self.assertEqual((body["kind"], body["apiVersion"]), ("EventList", "events.k8s.io/v1"))
            item = dict(ev)
            item.pop("kind")
            item.pop("apiVersion")
            self.assertEqual(body["items"], [item])
        status, body, _ = self.request("GET", "/apis/events.k8s.io/v1/namespaces/other/events")
        self.assertEqual(body["items"], [])

    # -- auth, RBAC, failures, request log --

    def test_token_is_checked(self):
        status, body, _ = self.create(token="wrong")
        self.assertEqual((status, body["reason"]), (401, "Unauthorized"))
        self.assertEqual(self.kube.events(), [])

    def test_rbac_forbids_in_the_apiservers_words_and_records_usage(self):
        self.kube.set_rbac([r for r in RULES if "events" not in r["resources"]])
        status, body, _ = self.create()
        self.assertEqual(status, 403)
        self.assertEqual(body, {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": 'events.events.k8s.io is forbidden: User "%s" cannot create resource "events" in API group '
                       '"events.k8s.io" in the namespace "shop"' % USER,
            "reason": "Forbidden", "details": {"group": "events.k8s.io", "kind": "events"}, "code": 403})
        status, body, _ = self.patch("x", self.series_patch(2))
        self.assertEqual(status, 403)
        self.assertEqual(body["message"], 'events.events.k8s.io "x" is forbidden: User "%s" cannot patch resource '
                                          '"events" in API group "events.k8s.io" in the namespace "shop"' % USER)
        self.kube.set_rbac([{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}])
        status, body, _ = self.request("GET", "/api/v1/pods")
        self.assertEqual(status, 403)
        self.assertEqual(body["message"], 'pods is forbidden: User "%s" cannot list resource "pods" in API group "" '
                                          'at the cluster scope' % USER)
        self.assertEqual(body["details"], {"kind": "pods"})
        self.assertEqual(self.create()[0], 201)
        self.kube.set_rbac(None)
        self.assertEqual(self.request("GET", "/api/v1/pods")[0], 200)
        self.assertEqual([(u["apiGroup"], u["resource"], u["verb"], u["count"], u["forbidden"])
                          for u in self.kube.rbac_usage()],
                         [("", "pods", "list", 2, 1), ("events.k8s.io", "events", "create", 2, 1),
                          ("events.k8s.io", "events", "patch", 1, 1)])

    def test_pods_and_services_unchanged_under_the_manifests_rbac(self):
        self.kube.set_rbac(RULES)
        self.kube.add_pod(deployment_pod("web", NS))
        status, body, _ = self.request("GET", "/api/v1/pods?limit=500")
        self.assertEqual((status, body["kind"], len(body["items"])), (200, "PodList", 1))
        self.assertEqual(self.create()[0], 201)
        self.assertEqual(self.request("GET", EVENTS)[0], 403)   # list on events is not granted

    def test_fail_next_429_with_retry_after(self):
        self.kube.fail_next(429, verb="create", retry_after=7)
        status, body, resp = self.create()
        self.assertEqual(status, 429)
        self.assertEqual(resp.getheader("Retry-After"), "7")
        self.assertEqual((body["reason"], body["details"]), ("TooManyRequests", {"retryAfterSeconds": 7}))
        self.assertEqual(self.create()[0], 201)
        self.assertEqual([(r["method"], r["status"]) for r in self.kube.event_requests()], [("POST", 429), ("POST", 201)])

    def test_fail_next_statuses_for_events(self):
        ev = self.created()
        name = ev["metadata"]["name"]
        self.kube.fail_next(403, verb="patch")
        status, body, _ = self.patch(name, self.series_patch(2))
        self.assertEqual((status, body["reason"]), (403, "Forbidden"))
        self.assertIn('cannot patch resource "events" in API group "events.k8s.io"', body["message"])
        self.kube.fail_next(409, resource="events", verb="create")
        status, body, _ = self.create(event(name="other"))
        self.assertEqual((status, body["message"]), (409, 'events.events.k8s.io "other" already exists'))
        self.kube.fail_next(503, resource="events")
        status, body, resp = self.patch(name, self.series_patch(2))
        self.assertEqual((status, resp.getheader("Retry-After")), (503, "1"))
        self.kube.fail_next(500, resource="pods")     # not for events
        self.assertEqual(self.patch(name, self.series_patch(2))[0], 200)
        self.kube.clear_failures()
        self.kube.fail_next("close", verb="create")
        with self.assertRaises((ConnectionError, http.client.HTTPException)):
            self.create(event(name="closed"))
        self.kube.fail_next("hang", verb="create", seconds=0.3)
        with self.assertRaises((ConnectionError, http.client.HTTPException)):
            self.create(event(name="hung"))
        statuses = [r["status"] for r in self.kube.event_requests()]
        self.assertEqual(statuses, [201, 403, 409, 503, 200, "close", "hang"])

    def test_event_requests_keep_the_body_as_received(self):
        raw = json.dumps(event(), indent=2)
        self.request("POST", EVENTS, raw, "application/json; charset=utf-8")
        self.patch("x", self.series_patch(2))
        reqs = self.kube.event_requests()
        self.assertEqual(reqs[0], {"method": "POST", "path": EVENTS, "query": "",
                                   "content_type": "application/json; charset=utf-8", "body": raw, "status": 201})
        self.assertEqual((reqs[1]["method"], reqs[1]["content_type"], reqs[1]["status"]), ("PATCH", MERGE, 404))
        self.kube.clear_events()
        self.assertEqual((self.kube.events(), self.kube.event_requests()), ([], []))


    @unittest.skipUnless(os.path.isdir(os.path.join(REPO, "tests", "deploy", "node_modules", "kubernetes-models"))
                         and shutil.which("node"), "node and tests/deploy/node_modules (npm ci) needed")
    def test_what_it_serves_passes_the_kubernetes_schema(self):
        self.created(related={"kind": "Pod", "namespace": NS, "name": "db-0", "apiVersion": "v1"})
        self.patch(event()["metadata"]["name"], self.series_patch(4))
        proc = subprocess.run(["node", os.path.join(REPO, "tests", "deploy", "validate_event.js"), "-"],
                              input=json.dumps(self.kube.events()), capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)


class FakeKubeProcessTest(unittest.TestCase):
    """The standalone server: --rbac takes deploy/base/clusterrole.yaml, the control ops answer."""

    def test_rbac_file_and_control_ops(self):
        with tempfile.TemporaryDirectory() as tmp:
            rules = os.path.join(tmp, "rules.json")
            with open(rules, "w") as f:
                json.dump(RULES, f)
            for rbac in (rules, os.path.join(REPO, "deploy", "base", "clusterrole.yaml")):
                proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "lib", "fake_kube.py"),
                                         "--port", "0", "--token", TOKEN, "--rbac", rbac, "--exit-on-stdin-eof"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                try:
                    info = json.loads(proc.stdout.readline())
                    self.assertTrue(info["url"].startswith("http://127.0.0.1:"))

                    def call(method, path, body=None, ctype="application/json", auth=True):
                        conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=10)
                        headers = {"Content-Type": ctype}
                        if auth:
                            headers["Authorization"] = "Bearer " + TOKEN
                        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        out = resp.status, json.loads(data) if data.strip() else None
                        conn.close()
                        return out

                    def control(**cmd):
                        status, body = call("POST", "/_control", cmd, auth=False)
                        self.assertTrue(body["ok"], body)
                        return body["result"]

                    self.assertEqual(call("POST", EVENTS, event())[0], 201)
                    self.assertEqual(call("PATCH", EVENTS + "/" + event()["metadata"]["name"],
                                          {"series": {"count": 2, "lastObservedTime": "2026-01-02T03:05:00.000000Z"}},
                                          MERGE)[0], 200)
                    self.assertEqual(call("GET", "/api/v1/pods")[0], 200)
                    self.assertEqual(call("GET", "/api/v1/pods?watch=1&timeoutSeconds=0")[0], 200)
                    self.assertEqual(call("GET", EVENTS)[0], 403)
                    self.assertEqual([e["series"]["count"] for e in control(op="events")], [2])
                    self.assertEqual(control(op="events", namespace="other"), [])
                    self.assertEqual([r["status"] for r in control(op="event_requests")], [201, 200])
                    used = {(u["apiGroup"], u["resource"], u["verb"]) for u in control(op="rbac_usage")}
                    self.assertEqual(used, {("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
                                            ("", "pods", "list"), ("", "pods", "watch"),
                                            ("events.k8s.io", "events", "list")})
                    control(op="set_rbac", rules=None)
                    self.assertEqual(call("GET", EVENTS)[0], 200)
                    control(op="clear_events")
                    self.assertEqual(control(op="events"), [])
                finally:
                    proc.stdin.close()
                    proc.wait(timeout=10)
                    proc.stdout.close()


if __name__ == "__main__":
    unittest.main()
