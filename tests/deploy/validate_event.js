#!/usr/bin/env node
// Validates Kubernetes Events against the events.k8s.io/v1 Event schema of kubernetes-models
// (the OpenAPI schema of the Kubernetes API, offline), e.g. the Events the agent wrote to the fake
// API server (tests/kernel/test_agent_events.py pipes `kube.events()` in).
//
//   node validate_event.js FILE     a JSON array of Events (or one Event) from FILE
//   node validate_event.js -        ... from stdin
//   node validate_event.js --self-test
//
// Prints one line per problem ("event[I] NAMESPACE/NAME: /path: message") and exits 1 if there
// is any (or the input is not JSON), 0 otherwise (quietly, or with "N event(s) valid" on stderr).
"use strict";

const fs = require("node:fs");
const { Event } = require("kubernetes-models/events.k8s.io/v1");

// Problems of one Event: ["/path: message", ...] ([] when valid).
function problemsOf(event) {
  if (event === null || typeof event !== "object" || Array.isArray(event)) return ["not a JSON object"];
  // The model's constructor fills in apiVersion and kind: check the object as given first.
  const own = [];
  for (const key of ["apiVersion", "kind"])
    if (!(key in event)) own.push(`/: must have required property ${key}`);
  try {
    new Event(event).validate();
    return own;
  } catch (error) {
    if (Array.isArray(error.errors) && error.errors.length)
      return [...own, ...error.errors.map((e) => `${e.instancePath || "/"}: ${e.message}`)];
    return [...own, String(error.message || error).split("\n")[0]];
  }
}

function label(event, index) {
  const meta = (event && typeof event === "object" && event.metadata) || {};
  return `event[${index}] ${meta.namespace ? meta.namespace + "/" : ""}${meta.name || meta.generateName || "?"}`;
}

// All problems of a parsed input (an array of Events or one Event), one line each.
function validateAll(input) {
  const events = Array.isArray(input) ? input : [input];
  const lines = [];
  events.forEach((event, i) => {
    for (const problem of problemsOf(event)) lines.push(`${label(event, i)}: ${problem}`);
  });
  return lines;
}

function selfTest() {
  const valid = {
    apiVersion: "events.k8s.io/v1",
    kind: "Event",
    metadata: { name: "ingress-7d4b9-x2x.17a1b2c3d4e5f6a7", namespace: "ingress-nginx" },
    eventTime: "2026-01-02T03:04:05.123456Z",
    series: { count: 2, lastObservedTime: "2026-01-02T03:05:00.000000Z" },
    reportingController: "rstwatch",
    reportingInstance: "node-a",
    action: "Observed",
    reason: "StaleKeepaliveReset",
    regarding: { kind: "Pod", namespace: "ingress-nginx", name: "ingress-7d4b9-x2x", uid: "u-1", apiVersion: "v1" },
    related: { kind: "Pod", namespace: "shop", name: "tomcat-0", apiVersion: "v1" },
    note: "idle_close_race: ingress-nginx/ingress-nginx-controller -> shop/tomcat:8080",
    type: "Warning",
    // As the API server serves them: struct fields stay, unset timestamps are null.
    deprecatedSource: {},
    deprecatedFirstTimestamp: null,
    deprecatedLastTimestamp: null,
  };
  const broken = {
    "no eventTime": (e) => delete e.eventTime,
    "no apiVersion": (e) => delete e.apiVersion,
    "the core v1 apiVersion": (e) => (e.apiVersion = "v1"),
    "kind Pod": (e) => (e.kind = "Pod"),
    "series.count as a string": (e) => (e.series.count = "2"),
    "series without lastObservedTime": (e) => delete e.series.lastObservedTime,
    "eventTime not a time": (e) => (e.eventTime = "yesterday"),
    "note as a number": (e) => (e.note = 5),
    "regarding as a string": (e) => (e.regarding = "pod/x"),
    "metadata.labels with a number": (e) => (e.metadata.labels = { a: 1 }),
    "deprecatedCount as a float": (e) => (e.deprecatedCount = 1.5),
  };
  const failures = [];
  const validLines = validateAll([valid]);
  if (validLines.length) failures.push(`a valid Event was rejected: ${validLines.join("; ")}`);
  for (const [what, mutate] of Object.entries(broken)) {
    const event = JSON.parse(JSON.stringify(valid));
    mutate(event);
    const lines = validateAll([valid, event]);
    if (!lines.length) failures.push(`${what}: accepted`);
    else if (!lines.every((l) => l.startsWith("event[1] "))) failures.push(`${what}: blamed the wrong event: ${lines}`);
  }
  if (validateAll("not an event").length !== 1) failures.push("a string was not one problem");
  for (const f of failures) console.log(`validate_event self-test: FAIL ${f}`);
  const tried = Object.keys(broken).length + 2;
  console.log(
    failures.length
      ? `validate_event self-test: ${failures.length} of ${tried} failed`
      : `validate_event self-test: ok (a valid Event passes, ${tried - 2} broken ones and a non-object are rejected)`,
  );
  return failures.length ? 1 : 0;
}

function main(argv) {
  if (argv.length !== 1 || argv[0] === "-h" || argv[0] === "--help") {
    console.error("usage: validate_event.js FILE|- | --self-test");
    return 2;
  }
  if (argv[0] === "--self-test") return selfTest();
  let input;
  try {
    input = JSON.parse(fs.readFileSync(argv[0] === "-" ? 0 : argv[0], "utf8"));
  } catch (error) {
    console.log(`validate_event: ${argv[0] === "-" ? "stdin" : argv[0]}: ${String(error.message).split("\n")[0]}`);
    return 1;
  }
  const lines = validateAll(input);
  for (const line of lines) console.log(line);
  if (!lines.length) console.error(`validate_event: ${Array.isArray(input) ? input.length : 1} event(s) valid`);
  return lines.length ? 1 : 0;
}

if (require.main === module) process.exit(main(process.argv.slice(2)));

module.exports = { problemsOf, validateAll };
