//! What `deploy/` ships: the Kubernetes DaemonSet, PodMonitor and Prometheus scrape
//! configuration hold the fields a working deployment depends on, the scrape
//! configuration's relabeling finds the tracer pods (checked by a real Prometheus), and
//! the default configuration file is the daemon's defaults, key for key.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use support::{services::*, *};

const PORT: u64 = 9464;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// The YAML documents of a file, as JSON values.
fn yaml_documents(path: &str) -> Vec<Value> {
    let path = deploy(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:#?}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn daemonset_can_trace_the_host() {
    let docs = yaml_documents("kubernetes/daemonset.yaml");
    let ds = of_kind(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let namespace = ds["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(of_kind(&docs, "Namespace")["metadata"]["name"], namespace);
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let template = &ds["spec"]["template"];
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(
            &template["metadata"]["labels"][key], value,
            "the pod template does not carry the selector's {key}"
        );
    }
    let pod = &template["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "thread ids come from the host's PID namespace"
    );
    assert_ne!(pod["hostNetwork"], true);

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let mut command = strings(&c["command"]);
    command.extend(strings(&c["args"]));
    let daemon = command
        .iter()
        .position(|a| *a == "daemon")
        .expect("runs `daemon`");
    assert_eq!(
        &command[daemon..],
        [
            "daemon",
            "--listen",
            &format!("0.0.0.0:{PORT}"),
            "--config",
            "/etc/tracer/tracer.toml"
        ]
    );
    // The configuration comes from the ConfigMap mounted there, and turns `container` on.
    let config_map = of_kind(&docs, "ConfigMap");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/tracer")
        .expect("/etc/tracer is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tracer.toml");
    std::fs::write(&file, config_map["data"]["tracer.toml"].as_str().unwrap()).unwrap();
    let effective = print_config(Some(&file));
    assert!(
        effective.contains("labels = [\"container\"]"),
        "the ConfigMap's configuration: {effective}"
    );
    let ports = c["ports"].as_array().unwrap();
    let metrics = ports
        .iter()
        .find(|p| p["containerPort"] == PORT)
        .expect("port 9464 declared");
    assert_eq!(metrics["name"], "metrics");
    assert_eq!(metrics["protocol"], "TCP");

    // Allowed to load and attach tracing programs: privileged, or CAP_BPF and CAP_PERFMON
    // (or CAP_SYS_ADMIN) with a seccomp profile that lets bpf() and perf_event_open()
    // through.
    let security = &c["securityContext"];
    if security["privileged"] != true {
        let added = strings(&security["capabilities"]["add"]);
        assert!(
            added.contains(&"SYS_ADMIN") || (added.contains(&"BPF") && added.contains(&"PERFMON")),
            "neither privileged nor CAP_BPF and CAP_PERFMON: {security}"
        );
        assert_eq!(security["seccompProfile"]["type"], "Unconfined");
        assert_eq!(security["runAsUser"], 0, "tracefs is readable by root only");
    }

    // tracefs and BTF from the host, read-only.
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = c["volumeMounts"].as_array().unwrap();
    for (host, why) in [
        ("/sys/kernel/tracing", "tracepoint formats"),
        ("/sys/kernel/btf", "the kernel's BTF"),
    ] {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .unwrap_or_else(|| panic!("no hostPath volume of {host} ({why})"));
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{host} is not mounted"));
        assert_eq!(mount["mountPath"], host);
        assert_eq!(mount["readOnly"], true, "{host}");
    }

    // Scrape annotations for Prometheus' pod discovery.
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], PORT.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn podmonitor_scrapes_the_daemonset() {
    let ds = of_kind(&yaml_documents("kubernetes/daemonset.yaml"), "DaemonSet").clone();
    let docs = yaml_documents("kubernetes/podmonitor.yaml");
    let pm = of_kind(&docs, "PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    let namespace = &ds["metadata"]["namespace"];
    assert!(
        strings(&pm["spec"]["namespaceSelector"]["matchNames"])
            .contains(&namespace.as_str().unwrap())
            || pm["metadata"]["namespace"] == *namespace
    );
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[key], value,
            "the PodMonitor selects {key}={value}"
        );
    }
    let endpoints = pm["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let endpoint = &endpoints[0];
    let port = endpoint["port"].as_str().unwrap();
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port && p["containerPort"] == PORT),
        "the PodMonitor's port {port:?} is not the container's {PORT}"
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert!(
        endpoint["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["targetLabel"] == "instance"
                && strings(&r["sourceLabels"]) == ["__meta_kubernetes_pod_node_name"]),
        "instance is the node's name"
    );
}

/// A pod as Kubernetes service discovery describes it: its address is that of another
/// declared container port, so the annotation's port has to be applied.
fn pod(name: &str, ip: &str, app: &str, path: Option<&str>) -> Value {
    let address = if ip.contains(':') {
        format!("[{ip}]:8080")
    } else {
        format!("{ip}:8080")
    };
    let mut labels = json!({
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_node_name": format!("node-{name}"),
        "__meta_kubernetes_namespace": "tracer",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
    });
    if let Some(path) = path {
        labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] = json!("true");
        labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] = json!(PORT.to_string());
        labels["__meta_kubernetes_pod_annotation_prometheus_io_path"] = json!(path);
    }
    json!({ "targets": [address], "labels": labels })
}

#[test]
fn scrape_config_finds_the_tracer_pods() {
    const TEST: &str = "scrape_config_finds_the_tracer_pods";
    let docs = yaml_documents("kubernetes/prometheus/scrape-config.yml");
    let mut config = docs[0].clone();
    let jobs = config["scrape_configs"].as_array().unwrap();
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "tracer")
        .expect("a `tracer` job");
    let sd = job["kubernetes_sd_configs"]
        .as_array()
        .expect("kubernetes_sd_configs");
    assert!(sd.iter().any(|s| s["role"] == "pod"));
    let relabeled: Vec<&str> = job["relabel_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| strings(&r["source_labels"]))
        .collect();
    for annotation in ["scrape", "port", "path"] {
        let label = format!("__meta_kubernetes_pod_annotation_prometheus_io_{annotation}");
        assert!(relabeled.contains(&label.as_str()), "{label} is not used");
    }

    // Debian's Prometheus has no Kubernetes discovery, so the pods come from static
    // configuration with the labels Kubernetes discovery gives, and the relabeling runs
    // as it would in the cluster.
    if !have_program(TEST, Path::new(PROMETHEUS), "prometheus") {
        return;
    }
    let job = &mut config["scrape_configs"][0];
    assert_eq!(job["job_name"], "tracer");
    job.as_object_mut().unwrap().remove("kubernetes_sd_configs");
    job["static_configs"] = json!([
        pod("a", "10.1.2.3", "tracer", Some("/metrics")),
        pod("b", "fd00::17", "tracer", Some("/elsewhere")),
        pod("c", "10.1.2.4", "tracer", None),
        pod("d", "10.1.2.5", "something-else", Some("/metrics")),
    ]);
    let dir = scratch();
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();
    let check = Command::new("/usr/bin/promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .expect("running promtool");
    expect_success("promtool check config", &check);

    let api = localhost(free_port());
    let mut prometheus = Running::start(
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={api}")),
        &dir.path().join("prometheus.log"),
    );
    let mut targets = Vec::new();
    let found = wait_until(Duration::from_secs(30), || {
        prometheus.assert_alive();
        let Ok((200, body)) = http_get(api, "/api/v1/targets") else {
            return false;
        };
        let reply: Value = serde_json::from_str(&body).unwrap();
        targets = reply["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !targets.is_empty()
    });
    assert!(found, "no targets");
    let mut seen: Vec<(String, String, String)> = targets
        .iter()
        .map(|t| {
            (
                t["labels"]["instance"].as_str().unwrap_or("").to_owned(),
                t["scrapeUrl"].as_str().unwrap_or("").to_owned(),
                t["labels"]["job"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    let expect = |node: &str, url: &str| (node.to_owned(), url.to_owned(), "tracer".to_owned());
    assert_eq!(
        seen,
        [
            expect("node-a", "http://10.1.2.3:9464/metrics"),
            expect("node-b", "http://[fd00::17]:9464/elsewhere"),
        ],
        "only annotated tracer pods, on their IP and annotated port and path"
    );
}

/// The lines of `deploy/tracer.toml` with every commented-out `key = value` and
/// `[[table]]` uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with("[[") => rest,
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_config(config: Option<&Path>) -> String {
    let mut command = Command::new(tracer());
    command.args(["daemon", "--print-config"]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let out = command.output().expect("running tracer");
    expect_success("tracer daemon --print-config", &out);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn default_config_lists_every_key_with_its_default() {
    let path = deploy("tracer.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let defaults = print_config(None);
    // As shipped (everything commented out) and with every key uncommented, the file
    // means the defaults.
    assert_eq!(print_config(Some(&path)), defaults);
    let dir = scratch();
    let all = dir.path().join("tracer.toml");
    std::fs::write(&all, uncommented(&text)).unwrap();
    assert_eq!(print_config(Some(&all)), defaults, "{}", uncommented(&text));
    // Every key the daemon knows is there.
    for line in defaults.lines() {
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        assert!(
            text.contains(&format!("\n# {key} = {value}\n")),
            "deploy/tracer.toml does not show `{key} = {value}`"
        );
    }
}
