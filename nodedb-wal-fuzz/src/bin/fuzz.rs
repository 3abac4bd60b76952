//! A mutational fuzzer that runs on the stable toolchain: starts from a target's seeds and its
//! checked-in corpus (`nodedb-wal-fuzz/corpus/<target>/`), mutates, runs the target body, and
//! saves every input that panics under `nodedb-wal-fuzz/artifacts/<target>/`. Usage: `cargo run --release -p nodedb-wal-fuzz --bin fuzz -- TARGET SECONDS`;
//! `-- TARGET FILE` runs the target once on a saved input, with its panic message;
//! `-- TARGET --write-seeds DIR` writes the target's built-in seeds into DIR.

use std::time::{Duration, Instant};

use nodedb_wal_fuzz::{TARGETS, mutate, seeds};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "record".into());
    let second = args.next();
    let Some(&(_, target)) = TARGETS.iter().find(|(n, _)| *n == name) else {
        eprintln!("unknown target {name}; targets: {:?}", TARGETS.iter().map(|t| t.0).collect::<Vec<_>>());
        std::process::exit(2);
    };
    // Seeds a coverage-guided fuzzer's corpus (cargo-fuzz's `fuzz/corpus/<target>/`) with the
    // built-in seeds, which are made by the crate's encoders and differ in every process.
    if second.as_deref() == Some("--write-seeds") {
        let dir = std::path::PathBuf::from(args.next().expect("--write-seeds DIR"));
        std::fs::create_dir_all(&dir).expect("seed dir");
        for (i, seed) in seeds(&name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write seed");
        }
        return;
    }
    if let Some(input) = second.as_deref().and_then(|s| std::fs::read(s).ok()) {
        target(&input);
        println!("{name}: no crash on {}", second.unwrap_or_default());
        return;
    }
    let seconds: u64 = second.and_then(|s| s.parse().ok()).unwrap_or(10);
    std::panic::set_hook(Box::new(|_| {}));
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pool = seeds(&name);
    if let Ok(entries) = std::fs::read_dir(crate_dir.join("corpus").join(&name)) {
        let files = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n != ".keep"));
        pool.extend(files.filter_map(|p| std::fs::read(p).ok()));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut runs, mut crashes) = (0u64, 0u64);
    let mut state = std::process::id() as u64 ^ 0xA5A5_5A5A;
    while Instant::now() < deadline {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let base = &pool[(state >> 33) as usize % pool.len()];
        let input = mutate(base, state);
        runs += 1;
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            crashes += 1;
            let dir = crate_dir.join("artifacts").join(&name);
            std::fs::create_dir_all(&dir).expect("artifacts dir");
            std::fs::write(dir.join(format!("crash-{runs}")), &input).expect("write artifact");
        } else if pool.len() < 4096 && state.is_multiple_of(64) {
            pool.push(input);
        }
    }
    println!("{name}: {runs} runs in {seconds} s, {crashes} crashes");
    if crashes > 0 {
        std::process::exit(1);
    }
}
