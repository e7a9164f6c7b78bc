mod common;
use fsd3d::gpu::DType;
use fsd3d::ops::matmul::{MatmulOpts, MatmulVariant, matmul};

fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
#[ignore]
fn tune() {
    let gpu = fsd3d::gpu::Gpu::from_env().unwrap();
    let variant = MatmulVariant::parse(&std::env::var("V").unwrap_or("subgroup".into())).unwrap();
    let dt = if std::env::var("F16").is_ok() { DType::F16 } else { DType::F32 };
    let tb = std::env::var("TB").is_ok();
    for s in std::env::var("S").unwrap_or("1024".into()).split(',') {
        let n: usize = s.parse().unwrap();
        let a = gpu.upload(&common::rand_vec(1, n * n, -1.0, 1.0), &[n, n], dt).unwrap();
        let b = gpu.upload(&common::rand_vec(2, n * n, -1.0, 1.0), &[n, n], dt).unwrap();
        let opts = MatmulOpts { variant: Some(variant), trans_b: tb, ..Default::default() };
        for _ in 0..2 { matmul(&gpu, &a, &b, None, &opts).unwrap(); gpu.sync().unwrap(); }
        let iters: usize = std::env::var("ITERS").map(|s| s.parse().unwrap()).unwrap_or_else(|_| (1.6e10 / (2.0 * (n * n * n) as f64)).ceil().max(2.0) as usize);
        let c0 = cpu_ticks();
        let t0 = std::time::Instant::now();
        for _ in 0..iters { matmul(&gpu, &a, &b, None, &opts).unwrap(); }
        gpu.sync().unwrap();
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_ticks() - c0) as f64 / 100.0;
        let fl = 2.0 * (n * n * n) as f64 * iters as f64;
        println!("RESULT {variant} {n} {dt} wall {:.2} GFLOP/s  cpu-2core {:.2} GFLOP/s  (iters {iters}, wall {wall:.2}s cpu {cpu:.2}s)", fl / wall / 1e9, 2.0 * fl / cpu / 1e9);
    }
}
