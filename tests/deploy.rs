//! The deployment files users copy: the Kubernetes manifests read into the
//! Kubernetes API's own types (k8s-openapi), with the fields docs/sweeps.md
//! relies on; the Slurm array script's directives and shard selection; the
//! container image's runtime pieces. (The Slurm script runs for real in
//! tests/slurm.rs.)
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde::Deserialize;

fn documents(path: &str) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text).map(|d| serde_norway::Value::deserialize(d).unwrap()).collect()
}

#[test]
fn the_indexed_job_and_its_volume_are_valid_kubernetes_objects() {
    let docs = documents("deploy/k8s/eval-job.yaml");
    assert_eq!(docs.len(), 2, "a PersistentVolumeClaim and a Job");
    let pvc: PersistentVolumeClaim = serde_norway::from_value(docs[0].clone()).expect("a PersistentVolumeClaim");
    let job: Job = serde_norway::from_value(docs[1].clone()).expect("a batch/v1 Job");
    assert_eq!(docs[0]["kind"].as_str(), Some("PersistentVolumeClaim"));
    assert_eq!(docs[1]["kind"].as_str(), Some("Job"));
    assert_eq!(docs[1]["apiVersion"].as_str(), Some("batch/v1"));

    // Every pod writes into one volume: shared between nodes.
    let pvc_spec = pvc.spec.as_ref().unwrap();
    assert!(pvc_spec.access_modes.as_ref().unwrap().iter().any(|m| m == "ReadWriteMany"));
    let claim = pvc.metadata.name.as_deref().unwrap();

    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"), "JOB_COMPLETION_INDEX needs an Indexed Job");
    let completions = spec.completions.unwrap();
    assert!(completions >= 1 && spec.parallelism.unwrap() <= completions);
    assert!(spec.backoff_limit_per_index.is_some(), "a failed index is retried on its own");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert!(pod.termination_grace_period_seconds.unwrap() >= 60, "time to checkpoint on SIGTERM");
    let container = &pod.containers[0];
    let command = [container.command.clone().unwrap_or_default(), container.args.clone().unwrap_or_default()].concat().join(" ");
    // The shard is the pod's index of `completions`, and fsd3d is exec'd so that it gets SIGTERM.
    assert!(command.contains(&format!("--shard \"${{JOB_COMPLETION_INDEX}}/{completions}\"")), "{command}");
    assert!(command.contains("exec fsd3d eval"), "{command}");
    let gpus = &container.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"];
    assert_eq!(gpus.0, "1");
    // The volume is the claim above, mounted where the command reads and writes.
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().claim_name, claim);
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.name, volume.name);
    assert!(command.contains(&format!("--out {}/", mount.mount_path)), "{command}");
}

#[test]
fn the_slurm_array_script_asks_for_a_gpu_a_warning_and_requeueing() {
    let script = std::fs::read_to_string("deploy/slurm/eval-array.sbatch").unwrap();
    let directives: Vec<&str> = script.lines().filter_map(|l| l.strip_prefix("#SBATCH ")).collect();
    for want in ["--gres=gpu:1", "--requeue", "--open-mode=append"] {
        assert!(directives.contains(&want), "{want} missing from {directives:?}");
    }
    assert!(directives.iter().any(|d| d.starts_with("--signal=B:USR1@")), "{directives:?}");
    assert!(script.contains("--shard \"$task/$count\""), "the array index picks the shard");
    assert!(script.contains("scontrol requeue"));
}

#[test]
fn the_image_carries_the_vulkan_loader_and_the_binary() {
    let docker = std::fs::read_to_string("deploy/k8s/Dockerfile").unwrap();
    assert!(docker.contains("libvulkan1"));
    assert!(docker.contains("NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics"), "the NVIDIA Vulkan ICD is mounted only with graphics");
    assert!(docker.contains("ENTRYPOINT [\"fsd3d\"]"));
    assert!(docker.contains("cargo build --release --locked"));
}
