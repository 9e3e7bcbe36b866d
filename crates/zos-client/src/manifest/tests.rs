//! Manifests as the Kubernetes documentation publishes them (`testdata/`), translated.

use super::*;
use zos_types::{ByteSize, Keypair, RestartPolicy, ZMachine};

fn options(node: &Keypair, ignore_unsupported: bool) -> Options {
    Options {
        name: "app".into(),
        node: node.public(),
        ip_range: "10.100.0.0/16".parse().unwrap(),
        ignore_unsupported,
    }
}

fn translate_text(node: &Keypair, text: &str, ignore: bool) -> Result<Translation, ManifestError> {
    let objects = parse_str("app.yaml", text)?;
    translate(&objects, &options(node, ignore))
}

fn testdata(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/manifest/testdata")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn names(file: &DeploymentFile) -> Vec<&str> {
    file.workloads.iter().map(|w| w.name.as_str()).collect()
}

fn machine<'a>(file: &'a DeploymentFile, name: &str) -> &'a ZMachine {
    let w = file.workloads.iter().find(|w| w.name.as_str() == name);
    match w.map(|w| &w.spec) {
        Some(WorkloadSpec::Zmachine(m)) => m,
        other => panic!("no machine {name}: {other:?} in {:?}", names(file)),
    }
}

fn zmount_size(file: &DeploymentFile, name: &str) -> ByteSize {
    let w = file.workloads.iter().find(|w| w.name.as_str() == name);
    match w.map(|w| &w.spec) {
        Some(WorkloadSpec::Zmount(z)) => z.size,
        other => panic!("no zmount {name}: {other:?}"),
    }
}

/// `Kind name: path` of each unsupported field.
fn paths(list: &[Unsupported]) -> Vec<String> {
    list.iter()
        .map(|u| {
            let object = u.object.split(" (").next().unwrap_or_default();
            format!("{object}: {}", u.path)
        })
        .collect()
}

fn unsupported(result: Result<Translation, ManifestError>) -> Vec<Unsupported> {
    match result {
        Err(ManifestError::Unsupported(list)) => list,
        Err(other) => panic!("another error: {other}"),
        Ok(t) => panic!("translated: {:?}", names(&t.file)),
    }
}

#[test]
fn the_nginx_deployment_is_three_machines_on_the_applications_network() {
    let node = Keypair::generate();
    let t = translate_text(&node, &testdata("nginx-deployment.yaml"), false).unwrap();
    assert!(t.warnings.is_empty());
    assert_eq!(
        names(&t.file),
        [
            "NET",
            "nginx_deployment_0",
            "nginx_deployment_1",
            "nginx_deployment_2"
        ]
    );
    let m = machine(&t.file, "nginx_deployment_1");
    assert_eq!(
        m.image.as_deref(),
        Some("docker://docker.io/library/nginx:1.14.2")
    );
    assert_eq!(m.restart, RestartPolicy::Always);
    assert!(
        m.ports.is_empty(),
        "a containerPort alone publishes nothing"
    );
    assert_eq!(m.network.interfaces[0].network.as_str(), NETWORK);
    match &t.file.workloads[0].spec {
        WorkloadSpec::Network(n) => assert_eq!(n.subnet.to_string(), "10.100.1.0/24"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.file.metadata, METADATA_TAG);
}

#[test]
fn a_node_port_service_publishes_and_a_port_change_is_named() {
    let node = Keypair::generate();
    let text = testdata("run-my-nginx.yaml");
    let list = unsupported(translate_text(&node, &text, false));
    assert_eq!(paths(&list), ["Service my-nginx: spec.ports[0].targetPort"]);
    assert!(
        list[0].reason.contains("port 8080 to 80"),
        "{}",
        list[0].reason
    );

    let t = translate_text(&node, &text, true).unwrap();
    assert_eq!(
        paths(&t.warnings),
        ["Service my-nginx: spec.ports[0].targetPort"]
    );
    // The name could not be given (the ports differ): the replica keeps its own.
    let m = machine(&t.file, "my_nginx_0");
    let published: Vec<(u16, u16)> = m.ports.iter().map(|p| (p.port, p.host_port())).collect();
    assert_eq!(published, [(80, 8080), (443, 443)]);
}

/// The aliases machine `name` answers to on the application's network.
fn aliases<'a>(file: &'a DeploymentFile, name: &str) -> &'a [String] {
    &machine(file, name).network.interfaces[0].aliases
}

#[test]
fn the_guestbook_resolves_each_service_to_its_machines_and_names_what_needs_balancing() {
    let node = Keypair::generate();
    let text = testdata("guestbook.yaml");
    let list = unsupported(translate_text(&node, &text, false));
    assert_eq!(paths(&list), ["Service frontend: spec.type"]);
    assert!(
        list[0].reason.contains("selects 3 machines"),
        "{}",
        list[0].reason
    );

    let t = translate_text(&node, &text, true).unwrap();
    assert_eq!(t.warnings, list);
    assert_eq!(
        names(&t.file),
        [
            "NET",
            "redis_leader_0",
            "redis_follower_0",
            "redis_follower_1",
            "frontend_0",
            "frontend_1",
            "frontend_2"
        ]
    );
    // Each Service's name, on every machine it selects.
    assert_eq!(aliases(&t.file, "redis_leader_0"), ["redis-leader"]);
    for follower in ["redis_follower_0", "redis_follower_1"] {
        assert_eq!(aliases(&t.file, follower), ["redis-follower"]);
    }
    assert_eq!(aliases(&t.file, "frontend_2"), ["frontend"]);
    let leader = machine(&t.file, "redis_leader_0");
    assert_eq!(
        leader.image.as_deref(),
        Some("docker://docker.io/redis:6.0.5")
    );
    assert_eq!(leader.cpu, 1, "100m rounds up to one vCPU");
    assert_eq!(leader.memory, ByteSize(100 * ByteSize::MIB));
    let follower = machine(&t.file, "redis_follower_1");
    assert_eq!(
        follower.image.as_deref(),
        Some("docker://gcr.io/google_samples/gb-redis-follower:v2")
    );
    let frontend = machine(&t.file, "frontend_2");
    assert_eq!(frontend.env["GET_HOSTS_FROM"], "dns");
    assert!(
        frontend.ports.is_empty(),
        "nothing published over 3 machines"
    );

    // One frontend: the LoadBalancer Service publishes its port.
    let one = text.replace("replicas: 3", "replicas: 1");
    let t = translate_text(&node, &one, false).unwrap();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let frontend = machine(&t.file, "frontend_0");
    assert_eq!(frontend.ports[0].port, 80);
    assert_eq!(frontend.ports[0].host_port(), 80);
    assert_eq!(aliases(&t.file, "frontend_0"), ["frontend"]);

    // A pod named as its Service already answers to that name.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: nginx, labels: {run: nginx}}\nspec:\n  \
               containers: [{name: c, image: 'nginx:1.25'}]\n---\napiVersion: v1\nkind: Service\n\
               metadata: {name: nginx}\nspec: {selector: {run: nginx}, ports: [{port: 80}]}\n";
    let t = translate_text(&node, pod, false).unwrap();
    assert!(aliases(&t.file, "nginx").is_empty());
}

#[test]
fn a_statefulset_gets_stable_names_and_a_zmount_per_replica() {
    let node = Keypair::generate();
    let text = testdata("statefulset.yaml");
    let list = unsupported(translate_text(&node, &text, false));
    assert_eq!(
        paths(&list),
        [
            "StatefulSet web: spec.minReadySeconds",
            "StatefulSet web: spec.template.spec.terminationGracePeriodSeconds",
            "StatefulSet web: spec.volumeClaimTemplates[0].spec.storageClassName",
        ]
    );
    let t = translate_text(&node, &text, true).unwrap();
    assert_eq!(
        names(&t.file),
        [
            "NET",
            "www_web_0",
            "www_web_1",
            "www_web_2",
            "web_0",
            "web_1",
            "web_2"
        ]
    );
    assert_eq!(zmount_size(&t.file, "www_web_2"), ByteSize(ByteSize::GIB));
    // The headless Service's name resolves to every replica.
    for replica in ["web_0", "web_1", "web_2"] {
        assert_eq!(aliases(&t.file, replica), ["nginx"]);
    }
    let m = machine(&t.file, "web_2");
    assert_eq!(m.mounts.len(), 1);
    assert_eq!(m.mounts[0].name.as_str(), "www_web_2");
    assert_eq!(m.mounts[0].mountpoint, "/usr/share/nginx/html");
    assert_eq!(
        m.image.as_deref(),
        Some("docker://registry.k8s.io/nginx-slim:0.24")
    );
}

#[test]
fn the_pi_job_runs_once_and_its_backoff_limit_is_named() {
    let node = Keypair::generate();
    let text = testdata("job-pi.yaml");
    let list = unsupported(translate_text(&node, &text, false));
    assert_eq!(paths(&list), ["Job pi: spec.backoffLimit"]);

    let t = translate_text(
        &node,
        &text.replace("backoffLimit: 4", "backoffLimit: 0"),
        false,
    )
    .unwrap();
    assert_eq!(names(&t.file), ["NET", "pi_0"]);
    let m = machine(&t.file, "pi_0");
    assert_eq!(
        m.image.as_deref(),
        Some("docker://docker.io/library/perl:5.34.0")
    );
    assert_eq!(
        m.entrypoint,
        ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]
    );
    assert!(m.cmd.is_empty());
    assert_eq!(m.restart, RestartPolicy::Never);

    let many = text
        .replace("backoffLimit: 4", "completions: 3")
        .replace("restartPolicy: Never", "restartPolicy: OnFailure");
    let list = unsupported(translate_text(&node, &many, false));
    assert_eq!(paths(&list), ["Job pi: spec.parallelism"]);
    let t = translate_text(
        &node,
        &many.replace("completions: 3", "completions: 3\n  parallelism: 3"),
        false,
    )
    .unwrap();
    assert_eq!(names(&t.file), ["NET", "pi_0", "pi_1", "pi_2"]);
    assert_eq!(machine(&t.file, "pi_2").restart, RestartPolicy::OnFailure);
    let err = translate_text(
        &node,
        &text.replace("restartPolicy: Never", "restartPolicy: Always"),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "spec.template.spec.restartPolicy: \"Always\": a Job allows OnFailure or Never"
        ),
        "{err}"
    );
}

#[test]
fn a_configmap_gives_env_values_and_files() {
    let node = Keypair::generate();
    let t = translate_text(&node, &testdata("configmap-pod.yaml"), false).unwrap();
    assert_eq!(names(&t.file), ["NET", "configmap_demo_pod"]);
    let m = machine(&t.file, "configmap_demo_pod");
    assert_eq!(m.env["PLAYER_INITIAL_LIVES"], "3");
    assert_eq!(
        m.env["UI_PROPERTIES_FILE_NAME"],
        "user-interface.properties"
    );
    assert_eq!(m.entrypoint, ["sleep", "3600"]);
    assert_eq!(m.restart, RestartPolicy::Always);
    let files: Vec<(&str, &str)> = m
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.content.as_str()))
        .collect();
    assert_eq!(
        files,
        [
            (
                "/config/game.properties",
                "enemy.types=aliens,monsters\nplayer.maximum-lives=5\n"
            ),
            (
                "/config/user-interface.properties",
                "color.good=purple\ncolor.bad=yellow\nallow.textmode=true\n"
            ),
        ]
    );
    let text = testdata("configmap-pod.yaml")
        .replace("      items:", "      defaultMode: 0400\n      items:");
    let t = translate_text(&node, &text, false).unwrap();
    let mode = machine(&t.file, "configmap_demo_pod").files[0].mode.clone();
    assert_eq!(mode.as_deref(), Some("0400"));
    let missing = testdata("configmap-pod.yaml").replace("key: player_initial_lives", "key: lives");
    let err = translate_text(&node, &missing, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.containers[0].env[0].valueFrom.configMapKeyRef: no ConfigMap \"game-demo\" with key \"lives\""),
        "{err}"
    );
}

#[test]
fn secret_values_are_sealed_to_the_node_and_nowhere_in_the_clear() {
    let node = Keypair::generate();
    let t = translate_text(&node, &testdata("secret-env.yaml"), false).unwrap();
    let m = machine(&t.file, "env_single_secret");
    assert!(m.env.is_empty(), "{:?}", m.env);
    let keys: Vec<&str> = m.secret_env.keys().map(String::as_str).collect();
    assert_eq!(keys, ["DB_password", "SECRET_USERNAME"]);
    let opener = zos_seal::Opener::new(&node).unwrap();
    assert_eq!(
        opener.open(&m.secret_env["SECRET_USERNAME"]).unwrap(),
        b"backend-admin"
    );
    assert_eq!(
        opener.open(&m.secret_env["DB_password"]).unwrap(),
        b"s3cr3t-Pa55"
    );
    let out = serde_json::to_string(&t.file).unwrap();
    for clear in ["backend-admin", "YmFja2VuZC1hZG1pbg==", "s3cr3t-Pa55"] {
        assert!(!out.contains(clear), "{clear} is in the output");
    }
    // A Secret as files: each file sealed to the node, 0400 as asked.
    let files = format!(
        "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  \
         - {{name: c, image: 'nginx:1.25', volumeMounts: [{{name: s, mountPath: /etc/s/}}]}}\n  \
         volumes:\n  - {{name: s, secret: {{secretName: backend-user, defaultMode: 0400}}}}\n",
        testdata("secret-env.yaml")
    );
    let t = translate_text(&node, &files, false).unwrap();
    let f = &machine(&t.file, "p").files;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].path.as_str(), f[0].mode.as_deref(), f[0].sealed),
        ("/etc/s/backend-username", Some("0400"), true)
    );
    assert_eq!(opener.open(&f[0].content).unwrap(), b"backend-admin");
    let out = serde_json::to_string(&t.file).unwrap();
    assert!(
        !out.contains("backend-admin"),
        "a Secret file is in the clear"
    );
}

#[test]
fn a_claim_is_a_zmount_and_ignore_unsupported_lists_what_was_dropped() {
    let node = Keypair::generate();
    let text = testdata("pvc-pod.yaml");
    let list = unsupported(translate_text(&node, &text, false));
    assert_eq!(
        paths(&list),
        [
            "PersistentVolumeClaim task-pv-claim: spec.storageClassName",
            "Pod task-pv-pod: spec.containers[0].image",
        ]
    );
    assert!(
        list[1].reason.contains("pull policy Always"),
        "{}",
        list[1].reason
    );
    let t = translate_text(&node, &text, true).unwrap();
    assert_eq!(t.warnings, list);
    assert_eq!(names(&t.file), ["NET", "task_pv_claim", "task_pv_pod"]);
    assert_eq!(
        zmount_size(&t.file, "task_pv_claim"),
        ByteSize(3 * ByteSize::GIB)
    );
    let m = machine(&t.file, "task_pv_pod");
    assert_eq!(m.mounts[0].name.as_str(), "task_pv_claim");
    assert_eq!(m.mounts[0].mountpoint, "/usr/share/nginx/html");
    assert_eq!(
        m.image.as_deref(),
        Some("docker://docker.io/library/nginx:latest")
    );
    let err = translate_text(
        &node,
        &text.replace("claimName: task-pv-claim", "claimName: other"),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("persistentVolumeClaim.claimName: no PersistentVolumeClaim \"other\""),
        "{err}"
    );
}

#[test]
fn an_exec_liveness_probe_is_the_healthcheck_and_http_probes_are_named() {
    let node = Keypair::generate();
    let text = testdata("liveness-exec.yaml");
    let t = translate_text(&node, &text, false).unwrap();
    let m = machine(&t.file, "liveness_exec");
    assert_eq!(m.cmd[0], "/bin/sh");
    let h = m.healthcheck.as_ref().unwrap();
    assert_eq!(h.test, ["cat", "/tmp/healthy"]);
    assert_eq!(
        (
            h.interval_secs,
            h.timeout_secs,
            h.retries,
            h.start_period_secs
        ),
        (5, 1, 3, 5)
    );

    let startup = text.replace(
        "    livenessProbe:",
        "    startupProbe:\n      exec: {command: [cat, /tmp/healthy]}\n      failureThreshold: 30\n      periodSeconds: 10\n    livenessProbe:",
    );
    let t = translate_text(&node, &startup, false).unwrap();
    let h = machine(&t.file, "liveness_exec")
        .healthcheck
        .clone()
        .unwrap();
    assert_eq!(h.start_period_secs, 5 + 300);

    let http = text.replace(
        "      exec:\n        command:\n        - cat\n        - /tmp/healthy\n",
        "      httpGet:\n        path: /healthz\n        port: 8080\n",
    );
    let list = unsupported(translate_text(&node, &http, false));
    assert_eq!(
        paths(&list),
        ["Pod liveness-exec: spec.containers[0].livenessProbe.httpGet"]
    );
    let ready = text.replace("livenessProbe:", "readinessProbe:");
    let list = unsupported(translate_text(&node, &ready, false));
    assert_eq!(
        paths(&list),
        ["Pod liveness-exec: spec.containers[0].readinessProbe"]
    );
}

#[test]
fn resources_namespaces_host_ports_and_not_built_fields() {
    let node = Keypair::generate();
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: "127.0.0.1:5000/shop/web@sha256:0123"
        imagePullPolicy: Always
        args: ["--port", "8080"]
        resources:
          requests: {cpu: 250m, memory: 64Mi}
          limits: {cpu: 1500m, memory: 300Mi, ephemeral-storage: 2Gi}
        ports:
        - {containerPort: 8080, hostPort: 18080}
"#;
    let t = translate_text(&node, text, false).unwrap();
    let m = machine(&t.file, "shop_web_0");
    assert_eq!(
        m.image.as_deref(),
        Some("docker://127.0.0.1:5000/shop/web@sha256:0123")
    );
    assert_eq!(m.cmd, ["--port", "8080"]);
    assert_eq!(m.cpu, 2);
    assert_eq!(m.memory, ByteSize(300 * ByteSize::MIB));
    assert_eq!(m.root_size, ByteSize(2 * ByteSize::GIB));
    assert_eq!((m.ports[0].port, m.ports[0].host_port()), (8080, 18080));

    let more = text.replace(
        "      containers:\n",
        "      affinity: {nodeAffinity: {}}\n      initContainers: [{name: init, image: 'busybox:1'}]\n      containers:\n      - {name: sidecar, image: 'busybox:1'}\n",
    )
    .replace("        args:", "        workingDir: /app\n        securityContext: {runAsUser: 1000}\n        args:");
    let list = unsupported(translate_text(&node, &more, false));
    assert_eq!(
        paths(&list),
        [
            "Deployment shop/web: spec.template.spec.affinity",
            "Deployment shop/web: spec.template.spec.containers[1]",
            "Deployment shop/web: spec.template.spec.initContainers",
        ]
    );
    assert!(list
        .iter()
        .all(|u| u.object.contains("(app.yaml, document 0)")));
    let t = translate_text(&node, &more, true).unwrap();
    assert_eq!(t.warnings.len(), 3);
    assert_eq!(
        machine(&t.file, "shop_web_0").image.as_deref(),
        Some("docker://docker.io/library/busybox:1")
    );
}

#[test]
fn working_dir_and_run_as_user_and_group_are_the_machines() {
    let node = Keypair::generate();
    let pod = |security: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  {security}\n  \
             containers:\n  - name: c\n    image: 'busybox:1'\n    workingDir: /app\n    \
             securityContext: {{runAsGroup: 2000}}\n"
        )
    };
    // The pod's user, the container's group.
    let t = translate_text(&node, &pod("securityContext: {runAsUser: 1000}"), false).unwrap();
    let m = machine(&t.file, "p");
    assert_eq!(m.workdir.as_deref(), Some("/app"));
    assert_eq!(m.user.as_deref(), Some("1000:2000"));
    // A group without a user, or another security setting: named.
    let err = translate_text(&node, &pod("hostname: p"), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.containers[0].securityContext.runAsGroup"),
        "{err}"
    );
    let list = unsupported(translate_text(
        &node,
        &pod("securityContext: {runAsUser: 1000, runAsNonRoot: true}").replace("hostname", "x"),
        false,
    ));
    assert_eq!(paths(&list), ["Pod p: spec.securityContext.runAsNonRoot"]);
}

#[test]
fn a_selector_that_misses_its_template_is_refused_as_the_api_server_does() {
    let node = Keypair::generate();
    // The template's label (indented 8) changed, not the selector's (indented 6).
    let text = testdata("nginx-deployment.yaml").replace("        app: nginx", "        app: web");
    let err = translate_text(&node, &text, true).unwrap_err().to_string();
    assert!(
        err.contains("Deployment nginx-deployment (app.yaml, document 0): spec.selector.matchLabels.app: `selector` does not match template `labels`"),
        "{err}"
    );
    let twice = format!("{0}---\n{0}", testdata("job-pi.yaml"));
    let err = translate_text(&node, &twice, true).unwrap_err().to_string();
    assert!(err.contains("given twice"), "{err}");
    let long =
        testdata("job-pi.yaml").replace("name: pi", "name: a-name-far-too-long-for-a-zos-workload");
    let err = translate_text(&node, &long, true).unwrap_err().to_string();
    assert!(err.contains("at most 36"), "{err}");
}

#[test]
fn a_claim_is_a_disk_of_one_machine_and_daemonsets_run_once() {
    let node = Keypair::generate();
    let text = testdata("pvc-pod.yaml")
        .replace("  storageClassName: manual\n", "")
        .replace("image: nginx\n", "image: nginx:1.25\n");
    let shared = format!(
        "{text}---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  \
         selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    \
         spec:\n      containers:\n      - {{name: a, image: 'busybox:1.36', volumeMounts: [{{name: d, mountPath: /data}}]}}\n      \
         volumes: [{{name: d, persistentVolumeClaim: {{claimName: task-pv-claim}}}}]\n"
    );
    let list = unsupported(translate_text(&node, &shared, false));
    assert_eq!(
        paths(&list),
        ["DaemonSet agent: spec.template.spec.volumes[0].persistentVolumeClaim.claimName"]
    );
    let t = translate_text(&node, &shared, true).unwrap();
    assert_eq!(
        names(&t.file),
        ["NET", "task_pv_claim", "task_pv_pod", "agent"]
    );
    assert_eq!(machine(&t.file, "task_pv_pod").mounts.len(), 1);
    let agent = machine(&t.file, "agent");
    assert!(agent.mounts.is_empty());
    assert_eq!(agent.restart, RestartPolicy::Always);
    let err = translate_text(
        &node,
        &shared.replace(
            "metadata: {labels: {app: agent}}",
            "metadata: {labels: {app: other}}",
        ),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("spec.selector.matchLabels.app"), "{err}");
}
