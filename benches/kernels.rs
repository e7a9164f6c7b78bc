//! `cargo bench`: the same measurements as `fsd3d bench`, on the default adapter.
//! Pass a family name to measure one: `cargo bench -- matmul`.
use fsd3d::bench::{BenchArgs, run};
use fsd3d::gpu::Gpu;

fn main() {
    // cargo passes `--bench`; the first other argument names a family.
    let family = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let gpu = match Gpu::from_env() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let args = BenchArgs { family, seconds: 1.0, ..Default::default() };
    if let Err(e) = run(&gpu, &args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
