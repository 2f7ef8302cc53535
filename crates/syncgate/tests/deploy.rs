//! The deployment examples are checked here, since no container engine runs in CI: every
//! YAML parses, Kubernetes objects are well-formed and probe the right endpoints, and the
//! compose file wires every node to Redis with AOF on.

use serde_yaml::Value;

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect()
}

use serde::Deserialize;

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

#[test]
fn kubernetes_manifests_are_well_formed() {
    let mut kinds = Vec::new();
    for file in ["deploy/kubernetes/syncgate.yaml", "deploy/kubernetes/redis.yaml"] {
        for d in docs(file) {
            let kind = d["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind")).to_string();
            assert!(d["apiVersion"].as_str().is_some(), "{file}: {kind} without apiVersion");
            assert!(s(&d, &["metadata", "name"]).as_str().is_some(), "{file}: {kind} without a name");
            if kind == "Deployment" || kind == "StatefulSet" {
                let sel = s(&d, &["spec", "selector", "matchLabels"]);
                let labels = s(&d, &["spec", "template", "metadata", "labels"]);
                assert_eq!(sel, labels, "{file}: selector does not match the pod labels");
            }
            if kind == "Deployment" {
                let c = &s(&d, &["spec", "template", "spec", "containers"])[0];
                assert_eq!(s(c, &["readinessProbe", "httpGet", "path"]).as_str(), Some("/ready"));
                assert_eq!(s(c, &["livenessProbe", "httpGet", "path"]).as_str(), Some("/health"));
                let env: Vec<&str> =
                    c["env"].as_sequence().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
                for var in ["SYNCGATE_REDIS_URL", "SYNCGATE_JWT_SECRET", "SYNCGATE_API_KEY", "SYNCGATE_INSTANCE_ID"] {
                    assert!(env.contains(&var), "deployment lacks {var}");
                }
            }
            if kind == "ConfigMap" {
                let cfg = s(&d, &["data", "syncgate.yaml"]).as_str().unwrap();
                syncgate::config::Config::from_yaml(cfg).expect("the ConfigMap holds a valid syncgate config");
            }
            kinds.push(kind);
        }
    }
    for k in ["ConfigMap", "Deployment", "Service", "StatefulSet", "PodDisruptionBudget"] {
        assert!(kinds.iter().any(|x| x == k), "no {k}");
    }
}

#[test]
fn compose_file_runs_three_nodes_on_redis_with_aof() {
    let d = docs("deploy/docker-compose.yml").remove(0);
    let services = d["services"].as_mapping().unwrap();
    let redis_cmd: Vec<&str> =
        s(&d, &["services", "redis", "command"]).as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(redis_cmd.windows(2).any(|w| w == ["--appendonly", "yes"]), "Redis must run with AOF");
    let mut nodes = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if name.starts_with("syncgate-") {
            nodes += 1;
            // `<<` merges are resolved by compose; the anchor's keys are checked on the first node.
            if name == "syncgate-1" {
                assert_eq!(s(svc, &["environment", "SYNCGATE_REDIS_URL"]).as_str(), Some("redis://redis:6379/0"));
            }
        }
    }
    assert_eq!(nodes, 3);
    let lb = std::fs::read_to_string(format!("{}/../../deploy/haproxy.cfg", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(lb.contains("option httpchk GET /ready") && lb.contains("timeout tunnel"));
}
