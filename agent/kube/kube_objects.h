// Decoding of the Kubernetes objects rstwatch reads (pods, services) into attribution's types.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "attribution.h"

namespace rstwatch {

// Parse a Kubernetes Pod / Service object (as in list items and watch events).
// Only pods and services are readable (RBAC), so the owner chain is followed by naming
// convention from the pod's controller ownerReference:
//   ReplicaSet  -> its Deployment: the ReplicaSet name minus "-" + the pod's pod-template-hash
//                  label; without the label, or if the name does not end so: the ReplicaSet name;
//   StatefulSet, DaemonSet, any other kind -> the owner's name;
//   Job         -> its CronJob when the Job is named NAME-<8 or more digits> (scheduled Jobs are
//                  CRONJOB-<minutes since the epoch>): NAME; else the Job name;
//   no controller owner -> the pod's own name.
// Required: metadata.uid/namespace/name (and kind, when present, must be Pod / Service); a
// missing required field, a mistyped field or an invalid IP gives nullopt and a one-line
// *error ("pod NS/NAME: what"). Service IPs: spec.clusterIPs (or clusterIP), "None"/"" skipped.
std::optional<PodInfo> pod_from_json(const nlohmann::json& object, std::string* error);
std::optional<ServiceInfo> service_from_json(const nlohmann::json& object, std::string* error);

}  // namespace rstwatch
