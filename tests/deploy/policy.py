"""The deployment rules, as functions over rendered manifests returning violations.

Each check returns a list of human-readable violations (empty: the rule holds),
so the same rule both gates the real charts and is shown to catch a bad change.
"""

from __future__ import annotations

import math
import re
from typing import Any

from agora import config

Manifest = dict[str, Any]

SERVICES = ("identity", "catalog", "search", "inventory", "orders", "payments", "audit")
WORKLOADS = ("gateway", *SERVICES)
ZONE_KEY = "topology.kubernetes.io/zone"
HOST_KEY = "kubernetes.io/hostname"
ZONES = 3
MIN_REPLICAS, MAX_REPLICAS = 2, 20
# Engines each workload must be able to reach (egress port in the NetworkPolicy).
ENGINE_PORTS_KEYS = ("postgres", "redis", "kafka", "temporal", "otel")


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest | None:
    found = find(docs, kind, name)
    return found[0] if len(found) == 1 else None


def workload(docs: list[Manifest], name: str) -> Manifest | None:
    return one(docs, "Rollout", name) or one(docs, "Deployment", name)


def pod_spec(docs: list[Manifest], name: str) -> dict[str, Any]:
    w = workload(docs, name)
    assert w is not None, f"no Rollout/Deployment {name}"
    return w["spec"]["template"]["spec"]


def pod_labels(docs: list[Manifest], name: str) -> dict[str, str]:
    w = workload(docs, name)
    assert w is not None
    return w["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """matchLabels semantics (the charts use no matchExpressions)."""
    if selector is None:
        return False
    match = selector.get("matchLabels") or {}
    if selector.get("matchExpressions"):
        return False
    return all(labels.get(k) == v for k, v in match.items())


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def settings_of(env_vars: dict[str, Any], service: str) -> config.Settings:
    """What agora/config.py reads from a pod's environment: its plain values, and a
    stand-in for each database password a Secret gives (prod refuses to run without)."""
    plain = {k: v for k, v in env_vars.items() if isinstance(v, str)}
    secret = {k: "from-a-secret" for k in env_vars if k.startswith("AGORA_DB_PASSWORD_")}
    return config.load({**plain, **secret}, service=service)


def _cpu(q: str | int | float) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


_MEM = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9}


def _mem(q: str | int) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(q))
    assert m, f"bad quantity {q}"
    return float(m.group(1)) * _MEM.get(m.group(2) or "", 1)


# ---- rules --------------------------------------------------------------------


def check_resources(docs: list[Manifest], name: str) -> list[str]:
    bad = []
    for c in pod_spec(docs, name)["containers"]:
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    bad.append(f"{name}/{c['name']}: no {kind}.{r}")
        if not bad:
            if _cpu(res["requests"]["cpu"]) > _cpu(res["limits"]["cpu"]):
                bad.append(f"{name}: cpu request above limit")
            if _mem(res["requests"]["memory"]) > _mem(res["limits"]["memory"]):
                bad.append(f"{name}: memory request above limit")
    return bad


def check_probes(docs: list[Manifest], name: str) -> list[str]:
    bad = []
    for c in pod_spec(docs, name)["containers"]:
        port_names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            p = c.get(probe)
            if not p or "httpGet" not in p:
                bad.append(f"{name}: no HTTP {probe}")
                continue
            if p["httpGet"]["port"] not in ("side", port_names.get("side")):
                bad.append(f"{name}: {probe} not on the side port")
        if "side" not in port_names:
            bad.append(f"{name}: no side port")
        if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
            bad.append(f"{name}: readiness is not /readyz")
        if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
            bad.append(f"{name}: liveness is not /healthz")
    return bad


def check_security(docs: list[Manifest], name: str) -> list[str]:
    bad = []
    spec = pod_spec(docs, name)
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        bad.append(f"{name}: pod not runAsNonRoot")
    if psc.get("runAsUser", 1) == 0:
        bad.append(f"{name}: pod runs as uid 0")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        bad.append(f"{name}: uses host namespaces")
    if spec.get("automountServiceAccountToken") is not False:
        bad.append(f"{name}: mounts a service account token")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: privilege escalation allowed")
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: root filesystem writable")
        if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
            bad.append(f"{name}: capabilities not dropped")
        if sc.get("capabilities", {}).get("add"):
            bad.append(f"{name}: adds capabilities")
        if sc.get("runAsUser") == 0 or (sc.get("runAsNonRoot") is False):
            bad.append(f"{name}: container runs as root")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            bad.append(f"{name}: no emptyDir at /tmp")
    return bad


def check_service_account(docs: list[Manifest], name: str) -> list[str]:
    sa_name = pod_spec(docs, name).get("serviceAccountName")
    if not sa_name or sa_name == "default":
        return [f"{name}: uses the default ServiceAccount"]
    sa = one(docs, "ServiceAccount", sa_name)
    if sa is None:
        return [f"{name}: ServiceAccount {sa_name} not rendered"]
    if sa.get("automountServiceAccountToken") is not False:
        return [f"{name}: ServiceAccount automounts its token"]
    return []


def min_replicas(docs: list[Manifest], name: str) -> int | None:
    for so in find(docs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name:
            return so["spec"].get("minReplicaCount")
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return hpa["spec"].get("minReplicas")
    return None


def check_pdb(docs: list[Manifest], name: str) -> list[str]:
    labels = pod_labels(docs, name)
    pdbs = [
        p for p in find(docs, "PodDisruptionBudget") if selects(p["spec"].get("selector"), labels)
    ]
    if len(pdbs) != 1:
        return [f"{name}: {len(pdbs)} PodDisruptionBudgets select it (want 1)"]
    spec = pdbs[0]["spec"]
    lowest = min_replicas(docs, name) or 1
    if "maxUnavailable" in spec:
        mu = spec["maxUnavailable"]
        if isinstance(mu, int) and not (1 <= mu < lowest):
            return [f"{name}: PDB maxUnavailable {mu} with {lowest} replicas"]
    elif "minAvailable" in spec:
        ma = spec["minAvailable"]
        if isinstance(ma, int) and not (1 <= ma < lowest):
            return [f"{name}: PDB minAvailable {ma} with {lowest} replicas: blocks drains or no-op"]
    else:
        return [f"{name}: PDB without a budget"]
    return []


def check_spread(docs: list[Manifest], name: str) -> list[str]:
    bad = []
    spec = pod_spec(docs, name)
    labels = pod_labels(docs, name)
    zone = [t for t in spec.get("topologySpreadConstraints", []) if t["topologyKey"] == ZONE_KEY]
    if len(zone) != 1:
        return [f"{name}: no zone topologySpreadConstraint"]
    z = zone[0]
    if z.get("maxSkew") != 1 or z.get("whenUnsatisfiable") != "DoNotSchedule":
        bad.append(f"{name}: zone spread must be maxSkew 1 / DoNotSchedule, is {z}")
    if not selects(z.get("labelSelector"), labels):
        bad.append(f"{name}: zone spread selector does not select its pods")
    anti = (spec.get("affinity") or {}).get("podAntiAffinity") or {}
    terms = [
        t.get("podAffinityTerm", t)
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    if not any(
        t["topologyKey"] == HOST_KEY and selects(t.get("labelSelector"), labels) for t in terms
    ):
        bad.append(f"{name}: no pod anti-affinity on {HOST_KEY}")
    return bad


def check_zone_failure(docs: list[Manifest], name: str, zones: int = ZONES) -> list[str]:
    """With maxSkew 1 over `zones` zones (check_spread), the worst zone holds
    ceil(n/zones) of n pods; losing it must leave at least one. With n >= zones that is
    n - ceil(n/3) >= 2n/3 rounded down: two of three pods at production's n = 3."""
    n = min_replicas(docs, name)
    if n is None:
        return [f"{name}: no autoscaler"]
    survivors = n - math.ceil(n / zones)
    if survivors < 1:
        return [f"{name}: {n} replicas, a zone failure leaves {survivors}"]
    return []


def check_autoscaling(docs: list[Manifest], name: str) -> list[str]:
    bad = []
    hpas = [
        h
        for h in find(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == name
    ]
    sos = [s for s in find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
    w = workload(docs, name)
    if len(hpas) + len(sos) != 1:
        return [
            f"{name}: {len(hpas)} HPAs and {len(sos)} ScaledObjects (want exactly one autoscaler)"
        ]
    if hpas:
        spec = hpas[0]["spec"]
        lo, hi = spec.get("minReplicas"), spec.get("maxReplicas")
        target = spec["scaleTargetRef"]
        cpu = [
            m
            for m in spec.get("metrics", [])
            if m["type"] == "Resource" and m["resource"]["name"] == "cpu"
        ]
        if not cpu:
            bad.append(f"{name}: HPA not on CPU")
    else:
        spec = sos[0]["spec"]
        lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
        target = spec["scaleTargetRef"]
        types = [t["type"] for t in spec.get("triggers", [])]
        if "cpu" not in types:
            bad.append(f"{name}: ScaledObject not on CPU")
    if w is not None and (
        target.get("kind") != w["kind"] or target.get("apiVersion") != w["apiVersion"]
    ):
        bad.append(
            f"{name}: autoscaler targets {target}, workload is {w['apiVersion']}/{w['kind']}"
        )
    if lo is None or hi is None or not (MIN_REPLICAS <= lo <= hi <= MAX_REPLICAS):
        bad.append(f"{name}: replicas {lo}-{hi} outside {MIN_REPLICAS}-{MAX_REPLICAS}")
    if hi != MAX_REPLICAS:
        bad.append(f"{name}: maxReplicas {hi}, want {MAX_REPLICAS}")
    if w is not None and w["spec"].get("replicas") not in (None,):
        bad.append(f"{name}: workload sets replicas, fighting the autoscaler")
    return bad


def check_queue_scaling(docs: list[Manifest], name: str) -> list[str]:
    """Workers scale on the Temporal task-queue backlog of their own queue."""
    sos = [s for s in find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
    if len(sos) != 1:
        return [f"{name}: no ScaledObject"]
    queue = f"agora-{name}"
    for t in sos[0]["spec"]["triggers"]:
        md = t.get("metadata", {})
        if t["type"] == "temporal" and md.get("taskQueue") == queue and md.get("endpoint"):
            return []
        if t["type"] == "prometheus" and f'taskqueue="{queue}"' in md.get("query", ""):
            return []
    return [f"{name}: no Temporal backlog trigger for {queue}"]


IN_FLIGHT_METRIC = "gateway_requests_in_flight"


def check_in_flight_scaling(docs: list[Manifest], name: str) -> list[str]:
    """The gateway scales on its requests in flight as well as CPU: waiting on slow
    upstreams, its pods hold requests without using CPU."""
    sos = [s for s in find(docs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
    if len(sos) != 1:
        return [f"{name}: no ScaledObject"]
    for t in sos[0]["spec"]["triggers"]:
        md = t.get("metadata", {})
        if t["type"] == "prometheus" and re.search(rf"\b{IN_FLIGHT_METRIC}\{{", md["query"]):
            return [] if float(md.get("threshold", 0)) > 0 else [f"{name}: no per-pod target"]
    return [f"{name}: no trigger on {IN_FLIGHT_METRIC}"]


def duration_s(text: str | None) -> int:
    """Seconds of an Argo Rollouts duration string ("90s", "2m", "1h"); none: 0."""
    if not text:
        return 0
    total = 0
    for amount, unit in re.findall(r"(\d+)([hms])", str(text)):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def _condition(expression: str, result: list[float]) -> bool:
    """An Argo Rollouts condition (expr syntax, the subset the charts use) on a
    Prometheus result vector."""
    python = expression.replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"!(?!=)", " not ", python)
    names = {"len": len, "isNaN": math.isnan, "result": result}
    return bool(eval(python, {"__builtins__": {}}, names))


def verdict(metric: Manifest, result: list[float]) -> str:
    """The phase Argo Rollouts gives one measurement: a failure condition that holds
    fails it, then a success condition that holds passes it; with both conditions set,
    neither holding is Inconclusive, with only a success condition it is Failed; a
    condition that cannot be evaluated (result[0] of no result) is an Error."""
    success: str = metric.get("successCondition") or ""
    failure: str = metric.get("failureCondition") or ""
    try:
        failed = bool(failure) and _condition(failure, result)
        passed = bool(success) and _condition(success, result)
    except (IndexError, TypeError):
        return "Error"
    if failed:
        return "Failed"
    if passed or not success:
        return "Successful"
    return "Inconclusive" if failure else "Failed"


def _analysis_ok(
    docs: list[Manifest], template_name: str, *, silence_may_pass: bool = False
) -> list[str]:
    at = one(docs, "AnalysisTemplate", template_name)
    if at is None:
        return [f"AnalysisTemplate {template_name} not rendered"]
    bad = []
    queries = {}
    for m in at["spec"].get("metrics", []):
        where = f"{template_name}/{m['name']}"
        prom = (m.get("provider") or {}).get("prometheus") or {}
        if not prom.get("address") or not prom.get("query"):
            bad.append(f"{where}: not a Prometheus query")
            continue
        if not m.get("successCondition") and not m.get("failureCondition"):
            bad.append(f"{where}: no condition")
        if m.get("failureLimit") is None or m["failureLimit"] > 2:
            bad.append(f"{where}: failureLimit must be set (<= 2)")
        if verdict(m, [0.0]) != "Successful" or verdict(m, [1e9]) != "Failed":
            bad.append(f"{where}: a good measurement must pass and a bad one fail")
        # No series (or fewer calls than the floor): no evidence either way.
        silent = verdict(m, [])
        if silent == "Successful" and not silence_may_pass:
            bad.append(f"{where}: passes when the new pods served no calls")
        elif silent not in ("Successful", "Inconclusive"):
            bad.append(f"{where}: no result is {silent}, not Inconclusive")
        queries[m["name"]] = prom["query"]
    if not any("histogram_quantile(0.99" in q for q in queries.values()):
        bad.append(f"{template_name}: no p99 latency metric")
    if not any(("5.." in q or "rpc_code" in q) and "/" in q for q in queries.values()):
        bad.append(f"{template_name}: no 5xx / server-error ratio metric")
    return bad


def analysis_seconds(docs: list[Manifest], template_name: str) -> int | None:
    """How long a run of the template lasts at most; None: until it is stopped."""
    at = one(docs, "AnalysisTemplate", template_name)
    if at is None:
        return 0
    longest = 0
    for m in at["spec"].get("metrics", []):
        if m.get("interval") and not m.get("count"):
            return None
        count = int(m.get("count") or 1)
        longest = max(
            longest, duration_s(m.get("initialDelay")) + count * duration_s(m.get("interval"))
        )
    return longest


def _check_blue_green(docs: list[Manifest], name: str, bg: dict[str, Any]) -> list[str]:
    bad = []
    for key in ("activeService", "previewService"):
        svc = bg.get(key)
        if not svc or one(docs, "Service", svc) is None:
            bad.append(f"{name}: {key} {svc} not rendered")
    if bg.get("activeService") == bg.get("previewService"):
        bad.append(f"{name}: active and preview Service are the same")
    for phase in ("prePromotionAnalysis", "postPromotionAnalysis"):
        templates = (bg.get(phase) or {}).get("templates") or []
        if not templates:
            bad.append(f"{name}: no {phase}")
        for t in templates:
            # Nothing routes to the preview Service by itself (docs/deploy.md).
            silence = phase == "prePromotionAnalysis"
            bad += _analysis_ok(docs, t["templateName"], silence_may_pass=silence)
            runs = analysis_seconds(docs, t["templateName"])
            if runs is None:
                bad.append(f"{name}: {phase} never ends, the rollout never finishes")
            elif phase == "postPromotionAnalysis" and bg.get("scaleDownDelaySeconds", 30) < runs:
                # Argo cancels the post-promotion run when it scales the old pods down.
                bad.append(f"{name}: old version scaled down before the analysis ends ({runs}s)")
    if not bg.get("scaleDownDelaySeconds", 30) >= 30:
        bad.append(f"{name}: old version scaled down too fast to switch back")
    return bad


def _check_canary(docs: list[Manifest], name: str, canary: dict[str, Any]) -> list[str]:
    bad = []
    weights = [s["setWeight"] for s in canary.get("steps", []) if "setWeight" in s]
    if weights != [10, 50, 100]:
        bad.append(f"{name}: canary weights {weights}, want [10, 50, 100]")
    if not any("pause" in s for s in canary.get("steps", [])):
        bad.append(f"{name}: canary never pauses for analysis")
    analysis = canary.get("analysis") or {}
    if not analysis.get("templates"):
        bad.append(f"{name}: canary has no background analysis")
    for t in analysis.get("templates") or []:
        bad += _analysis_ok(docs, t["templateName"])
        if analysis_seconds(docs, t["templateName"]) is not None:
            bad.append(f"{name}: background analysis ends before the rollout completes")
    if analysis.get("startingStep", 0) > 1:
        bad.append(f"{name}: analysis starts after the first canary step")
    return bad


def check_rollout(docs: list[Manifest], name: str) -> list[str]:
    r = one(docs, "Rollout", name)
    if r is None:
        return [f"{name}: not an Argo Rollout"]
    strategy = r["spec"].get("strategy", {})
    if name == "gateway":
        bg = strategy.get("blueGreen")
        return _check_blue_green(docs, name, bg) if bg else [f"{name}: not blue-green"]
    canary = strategy.get("canary")
    return _check_canary(docs, name, canary) if canary else [f"{name}: not canary"]


def check_network_policy(docs: list[Manifest], name: str) -> list[str]:
    bad = []
    labels = pod_labels(docs, name)
    deny = [
        p
        for p in find(docs, "NetworkPolicy")
        if p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        bad.append("no namespace-wide default-deny NetworkPolicy")
    own = [
        p
        for p in find(docs, "NetworkPolicy")
        if p["spec"].get("podSelector") != {} and selects(p["spec"].get("podSelector"), labels)
    ]
    if len(own) != 1:
        return [*bad, f"{name}: {len(own)} NetworkPolicies select it (want 1)"]
    spec = own[0]["spec"]
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        bad.append(f"{name}: policy does not cover both directions")
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction, []):
            if not rule.get(peer_key):
                bad.append(f"{name}: {direction} rule open to everyone: {rule}")
            if not rule.get("ports"):
                bad.append(f"{name}: {direction} rule on every port: {rule}")
            for peer in rule.get(peer_key) or []:
                if peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0"):
                    bad.append(f"{name}: {direction} to the whole internet")
                if peer == {"namespaceSelector": {}}:
                    bad.append(f"{name}: {direction} from every namespace")
    return bad


def ingress_ports_from(policy: Manifest, peer_match: dict[str, str]) -> set[int]:
    ports: set[int] = set()
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            if selects(peer.get("podSelector"), peer_match) and "namespaceSelector" not in peer:
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


def egress_ports(policy: Manifest) -> set[int]:
    return {p["port"] for rule in policy["spec"].get("egress", []) for p in rule.get("ports", [])}


def egress_ports_to(policy: Manifest, peer_match: dict[str, str]) -> set[int]:
    """Ports the policy's pods may open to pods of this namespace labelled `peer_match`."""
    ports: set[int] = set()
    for rule in policy["spec"].get("egress", []):
        for peer in rule.get("to", []):
            if selects(peer.get("podSelector"), peer_match) and "namespaceSelector" not in peer:
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


def own_network_policy(docs: list[Manifest], name: str) -> Manifest:
    """The one workload policy selecting this workload's pods (not the default deny)."""
    labels = pod_labels(docs, name)
    (np,) = [
        p
        for p in find(docs, "NetworkPolicy")
        if p["spec"].get("podSelector") and selects(p["spec"]["podSelector"], labels)
    ]
    return np


def grpc_flows(docs: list[Manifest]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(caller, service) pairs whose gRPC flow the policies allow: leaving the caller
    (its egress) and entering the service on its gRPC port (the service's ingress).
    A call works only where a pair is in both."""
    egress, ingress = set(), set()
    for service in SERVICES:
        svc = one(docs, "Service", service)
        assert svc is not None, f"no Service {service}"
        grpc = svc["spec"]["ports"][0]["port"]
        target = pod_labels(docs, service)
        for caller in WORKLOADS:
            if caller == service:
                continue
            if grpc in egress_ports_to(own_network_policy(docs, caller), target):
                egress.add((caller, service))
            source = pod_labels(docs, caller)
            if grpc in ingress_ports_from(own_network_policy(docs, service), source):
                ingress.add((caller, service))
    return egress, ingress


def check_mtls(docs: list[Manifest], name: str) -> list[str]:
    """Certificate per workload, its secret mounted where the process reads its PKI
    files, and no plaintext gRPC anywhere."""
    bad = []
    spec = pod_spec(docs, name)
    container = spec["containers"][0]
    env = env_of(container)
    pki_dir = env.get("AGORA_PKI_DIR")
    if not pki_dir:
        return [f"{name}: AGORA_PKI_DIR not set"]
    certs = [c for c in find(docs, "Certificate") if c["spec"].get("commonName") == name]
    if len(certs) != 1:
        return [f"{name}: {len(certs)} Certificates with CN {name}"]
    cert = certs[0]["spec"]
    if name not in cert.get("dnsNames", []):
        bad.append(f"{name}: certificate lacks DNS name {name}")
    if not {"server auth", "client auth"} <= set(cert.get("usages", [])):
        bad.append(f"{name}: certificate not valid as server and client")
    issuer = cert["issuerRef"]
    if issuer.get("kind", "Issuer") == "Issuer":
        iss = one(docs, "Issuer", issuer["name"])
        if iss is None or "ca" not in iss["spec"]:
            bad.append(f"{name}: issuer {issuer['name']} is not a rendered CA Issuer")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    m = mounts.get(f"{pki_dir}/{name}")
    if (
        m is None
        or volumes.get(m["name"], {}).get("secret", {}).get("secretName") != cert["secretName"]
    ):
        bad.append(f"{name}: secret {cert['secretName']} not mounted at {pki_dir}/{name}")
    elif not m.get("readOnly"):
        bad.append(f"{name}: certificate mount is writable")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    allowed = {"side", "http"} if name == "gateway" else {"side", "grpc-mtls"}
    if set(ports) - allowed:
        bad.append(f"{name}: unexpected ports {set(ports) - allowed}")
    svc = one(docs, "Service", name)
    if svc is None:
        bad.append(f"{name}: no Service")
    else:
        for p in svc["spec"]["ports"]:
            if "grpc" in p["name"] and p["name"] != "grpc-mtls":
                bad.append(f"{name}: Service port {p['name']} looks like plaintext gRPC")
        if name != "gateway":
            grpc = [p for p in svc["spec"]["ports"] if p.get("appProtocol") == "grpc"]
            if len(grpc) != 1 or grpc[0]["port"] != ports.get("grpc-mtls"):
                bad.append(f"{name}: Service gRPC port is not the mTLS container port")
    return bad


def scrapers(docs: list[Manifest], name: str) -> list[str]:
    """Every Prometheus Operator object that makes a scrape target of this workload's
    pods: a PodMonitor selecting them, or a ServiceMonitor selecting a Service that
    selects them (one target per such Service). More than one: every series twice."""
    labels = pod_labels(docs, name)
    found = [
        f"PodMonitor/{m['metadata']['name']}"
        for m in find(docs, "PodMonitor")
        if selects(m["spec"].get("selector"), labels)
    ]
    for monitor in find(docs, "ServiceMonitor"):
        for svc in find(docs, "Service"):
            if selects(monitor["spec"].get("selector"), svc["metadata"]["labels"]) and selects(
                {"matchLabels": svc["spec"].get("selector") or {}}, labels
            ):
                found.append(
                    f"ServiceMonitor/{monitor['metadata']['name']} via {svc['metadata']['name']}"
                )
    return found


def check_scrape(docs: list[Manifest], name: str) -> list[str]:
    """Scraped exactly once, on the side port's /metrics, under job="agora" with the
    `service` label of the rules and dashboards and the revision the analysis reads."""
    found = scrapers(docs, name)
    if found != [f"PodMonitor/{name}"]:
        return [f"{name}: scraped by {found} (want exactly its own PodMonitor)"]
    monitor = one(docs, "PodMonitor", name)
    assert monitor is not None
    spec = monitor["spec"]
    container = pod_spec(docs, name)["containers"][0]
    side = [p for p in container.get("ports", []) if p["name"] == "side"]
    eps = spec.get("podMetricsEndpoints", [])
    if not side or [(e.get("port"), e.get("path", "/metrics")) for e in eps] != [
        ("side", "/metrics")
    ]:
        return [f"{name}: PodMonitor does not scrape /metrics on the side port"]
    if pod_labels(docs, name).get(spec.get("jobLabel")) != "agora":
        return [f"{name}: scraped under a job other than 'agora' (alert rules select job=agora)"]
    service = [
        r
        for r in eps[0].get("relabelings", [])
        if r.get("targetLabel") == "service"
        and r.get("sourceLabels") == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        and r.get("action", "replace") == "replace"
    ]
    if not service or pod_labels(docs, name).get("app.kubernetes.io/name") != name:
        return [f"{name}: series lack service={name} (rules and dashboards group by it)"]
    if "rollouts-pod-template-hash" not in spec.get("podTargetLabels", []):
        return [f"{name}: PodMonitor drops the revision label the analysis needs"]
    return []
